"""The labelled dataset: blob references, labels and provenance in Redis.

One record per segmentation (``<prefix>:case:<segmentation event id>``): the volume and
labelmap blob references, the volume's affine, the five Dice labels, their source
(``groundtruth`` or ``rca``) and the event that brought them. Rules, applied atomically (one
Lua script per label):

* an annotator's ground truth outranks an RCA estimate for the same segmentation — it replaces
  it, and an RCA label arriving later does not replace it back;
* the same label event delivered twice changes nothing (Kafka redelivery is harmless);
* a series belongs to the fixed **holdout** or to **training** by a hash of its
  SeriesInstanceUID, so both phases of a study and every re-labelling stay on one side, and the
  holdout never changes as labels arrive;
* every label gets a sequence number (an upgrade gets a new one); the trainer records the
  highest number it trained on as the **watermark** — in the store and in the registered
  challenger's provenance, so a trainer that dies between registering and recording finds it
  there and never trains the same labels twice. ``new_count`` = training labels above it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis

from cmrqc_qc_predictor.classes import OUTPUT_CLASSES
from cmrqc_shared.blobs import BlobRef

LabelSource = Literal["groundtruth", "rca"]
CLASSES = OUTPUT_CLASSES
"""The five labels, in the QC predictor's output order."""

_RECORD = """
local existing = redis.call('GET', KEYS[1])
if existing then
  local old = cjson.decode(existing)
  if old['label_event_id'] == ARGV[2] then return 'kept' end
  if old['source'] == 'groundtruth' and ARGV[3] == 'rca' then return 'kept' end
end
redis.call('SET', KEYS[1], ARGV[1])
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, ARGV[4])
if existing then return 'upgraded' end
return 'added'
"""


@dataclass(frozen=True)
class LabelledCase:
    """One segmentation with its Dice labels and where they came from."""

    segmentation_event_id: str
    series_instance_uid: str
    volume: BlobRef
    labelmap: BlobRef
    affine: list[list[float]]
    dsc: dict[str, float]
    source: LabelSource
    label_event_id: str
    provenance: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["volume"] = self.volume.model_dump(mode="json")
        data["labelmap"] = self.labelmap.model_dump(mode="json")
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> LabelledCase:
        data = json.loads(raw)
        data["volume"] = BlobRef(**data["volume"])
        data["labelmap"] = BlobRef(**data["labelmap"])
        return cls(**data)

    def targets(self) -> list[float]:
        """The five labels in class order (BG, LV, LVM, RVC, WH)."""
        return [float(self.dsc[name]) for name in CLASSES]


def split_of(series_instance_uid: str, holdout_fraction: float) -> Literal["train", "holdout"]:
    """``holdout`` for a fixed ``holdout_fraction`` of series (by SHA-256 of the UID)."""
    digest = hashlib.sha256(series_instance_uid.encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "holdout" if position < holdout_fraction else "train"


class LabelStore:
    """The retrainer's labelled dataset (see the module docstring)."""

    def __init__(self, client: redis.Redis, prefix: str, holdout_fraction: float) -> None:
        self._redis = client
        self._prefix = prefix
        self.holdout_fraction = holdout_fraction
        self._record = client.register_script(_RECORD)

    @classmethod
    def from_url(cls, url: str, prefix: str, holdout_fraction: float) -> LabelStore:
        return cls(redis.Redis.from_url(url), prefix, holdout_fraction)

    def _key(self, name: str) -> str:
        return f"{self._prefix}:{name}"

    def record(self, case: LabelledCase) -> str:
        """Store a label; returns ``added``, ``upgraded`` (RCA → ground truth, or a newer
        label of the same rank) or ``kept`` (a duplicate, or RCA after ground truth)."""
        split = split_of(case.series_instance_uid, self.holdout_fraction)
        outcome = self._record(
            keys=[
                self._key(f"case:{case.segmentation_event_id}"),
                self._key(split),
                self._key("seq"),
            ],
            args=[
                case.to_json(),
                case.label_event_id,
                case.source,
                case.segmentation_event_id,
                split,
            ],
        )
        return outcome.decode() if isinstance(outcome, bytes) else str(outcome)

    def get(self, segmentation_event_id: str) -> LabelledCase | None:
        raw = self._redis.get(self._key(f"case:{segmentation_event_id}"))
        return LabelledCase.from_json(raw) if raw is not None else None  # type: ignore[arg-type]

    def _cases(self, split: str, limit: int | None = None) -> list[LabelledCase]:
        stop = -1 if limit is None else limit - 1
        ids = self._redis.zrevrange(self._key(split), 0, stop)  # most recent first
        keys = [self._key(f"case:{i.decode() if isinstance(i, bytes) else i}") for i in ids]
        raws = self._redis.mget(keys) if keys else []
        cases = [LabelledCase.from_json(raw) for raw in raws if raw is not None]  # type: ignore[union-attr]
        return list(reversed(cases))  # oldest first

    def training_cases(self, limit: int | None = None) -> list[LabelledCase]:
        """The most recent ``limit`` training labels (all by default), oldest first."""
        return self._cases("train", limit)

    def holdout_cases(self) -> list[LabelledCase]:
        """Every holdout label, oldest first."""
        return self._cases("holdout")

    def latest_training_seq(self) -> int:
        """The sequence number of the newest training label (0 when there is none)."""
        top = self._redis.zrevrange(self._key("train"), 0, 0, withscores=True)
        return int(top[0][1]) if top else 0  # type: ignore[index]

    def watermark(self) -> int:
        """The newest label sequence number the last challenger was trained on."""
        return int(self._redis.get(self._key("watermark")) or 0)  # type: ignore[arg-type]

    def set_watermark(self, seq: int) -> None:
        """Record that labels up to ``seq`` were trained on (never moves backwards)."""
        self._redis.eval(
            "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
            "redis.call('SET', KEYS[1], ARGV[1]) end return 0",
            1,
            self._key("watermark"),
            seq,
        )

    def new_count(self) -> int:
        """Training labels added or upgraded after the watermark."""
        low = f"({self.watermark()}"
        return int(self._redis.zcount(self._key("train"), low, "+inf"))  # type: ignore[arg-type]

    def counts(self) -> dict[str, int]:
        return {
            "train": int(self._redis.zcard(self._key("train"))),  # type: ignore[arg-type]
            "holdout": int(self._redis.zcard(self._key("holdout"))),  # type: ignore[arg-type]
            "new": self.new_count(),
        }

    def append_curve(self, point: str) -> None:
        """One learning-curve point (JSON) per training round."""
        self._redis.rpush(self._key("curve"), point)

    def curve(self) -> list[str]:
        raws = self._redis.lrange(self._key("curve"), 0, -1)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in raws]  # type: ignore[union-attr]

    def close(self) -> None:
        self._redis.close()
