"""Settings from the environment, and the cmrqc subcommands the package registers."""

from __future__ import annotations

import argparse

import pytest
from pydantic import ValidationError

from cmrqc_qc_predictor.commands import register
from cmrqc_qc_predictor.settings import QcPredictorSettings


def test_settings_read_thresholds_batch_and_device_from_the_environment(
    env_clean: pytest.MonkeyPatch,
) -> None:
    env_clean.setenv("CMRQC_QC_PREDICTOR_THRESHOLDS", '{"WH": 0.75, "LVM": 0.6}')
    env_clean.setenv("CMRQC_QC_PREDICTOR_MAX_BATCH", "16")
    env_clean.setenv("CMRQC_QC_PREDICTOR_DEVICE", "cpu")
    env_clean.setenv("CMRQC_QC_PREDICTOR_KAFKA__TOPIC_NAMESPACE", "ns.")
    settings = QcPredictorSettings()
    assert settings.thresholds == {"WH": 0.75, "LVM": 0.6}
    assert settings.max_batch == 16 and settings.device == "cpu"
    assert settings.kafka.topic_namespace == "ns." and settings.model_source == "builtin"


def test_a_threshold_for_an_unknown_class_is_refused(env_clean: pytest.MonkeyPatch) -> None:
    env_clean.setenv("CMRQC_QC_PREDICTOR_THRESHOLDS", '{"AORTA": 0.5}')
    with pytest.raises(ValidationError, match="unknown classes"):
        QcPredictorSettings()


def test_train_evaluate_and_bench_qc_join_verbs_another_service_created() -> None:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    other = subparsers.add_parser("train").add_subparsers(dest="target")
    other.add_parser("segmenter")
    register(subparsers)
    args = parser.parse_args(["train", "qc", "--dataset", "d", "--model", "paper"])
    assert args.model == "paper" and callable(args.handler)
    assert parser.parse_args(["train", "segmenter"]).target == "segmenter"
    assert parser.parse_args(["evaluate", "qc", "--dataset", "d", "--json"]).json
    assert parser.parse_args(["bench", "qc", "--batch", "4"]).batch == 4


def test_bench_times_both_models_in_their_own_processes() -> None:
    """The benchmark's whole path (spawned per-model workers, alternating rounds, the ratio);
    what it measures is printed, never asserted."""
    from cmrqc_qc_predictor.bench import run_bench

    report = run_bench(batch=2, rounds=2, threads=1, devices=["cpu"], fast_views=(2,))
    cpu = report["devices"]["cpu"]
    for model in ("paper", "fast", "fast-views-2"):
        for key in ("batch_1", "batch_2"):
            figures = cpu[model][key]
            assert figures["prepare_ms"] > 0 and figures["forward_ms"] > 0
            assert figures["total_ms"] == pytest.approx(
                figures["prepare_ms"] + figures["forward_ms"], abs=0.02
            )
    assert set(cpu["ratio_paper_over_fast"]) == {"batch_1", "batch_2"}
    assert set(cpu["ratio_paper_over_fast_views_2"]) == {"batch_1", "batch_2"}
    with pytest.raises(ValueError, match="views"):
        run_bench(batch=2, rounds=1, threads=1, devices=["cpu"], fast_views=(9,))
    # the CPU under both OpenMP wait policies, whatever the calling process had set
    assert report["devices"]["cpu-omp-passive"]["omp_wait_policy"] == "PASSIVE"
    assert cpu["omp_wait_policy"].startswith("unset")
