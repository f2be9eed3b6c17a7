"""Issue 21: every option's type and range is checked when the configuration is built (one line naming the
option, and the file it came from), and a run loses nothing to a bad value, a failing final validation, a
kill or a resume of a finished run."""
import dataclasses
import json
import subprocess
import sys

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seglab import cli, losses
from seglab.engine.config import ConfigError, TrainConfig, load_config
from seglab.engine.train import Trainer, train

from test_train import read_log, tiny_config

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.one_of(st.integers(-5, 5), st.floats(-2, 2), st.text(max_size=4)), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(["1e-3", "8", "-2", "2.5", "abc", "", "nan", "inf", "auto", "cuda:0", "gpu", "ce+dice"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FIELDS), value=ANY_VALUE)
def test_any_value_of_any_option_builds_a_config_or_is_a_one_line_value_error_naming_it(name, value, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({name: value}))
    for source, build in ((path, lambda: load_config(path)), ("flags", lambda: load_config(None, {name: value}))):
        try:
            config = build()
        except ValueError as error:  # nothing else: no TypeError, ZeroDivisionError, KeyError, ...
            message = str(error)
            assert "\n" not in message and name in message, message
            if isinstance(error, ConfigError) and source == path:
                assert message.startswith(f"{path}: {name}"), message  # the file's value, named with the file
        else:
            assert isinstance(config, TrainConfig)


@pytest.mark.parametrize("text, message", [
    ("batch_size: -2\n", "x.yaml: batch_size must be a positive integer, got -2"),
    ("batch_size: 0\n", "x.yaml: batch_size must be a positive integer, got 0"),
    ("iters: abc\n", "x.yaml: iters must be a positive integer, got 'abc'"),
    ("iters: -5\n", "x.yaml: iters must be a positive integer, got -5"),
    ("iters: 2.5\n", "x.yaml: iters must be a positive integer, got 2.5"),
    ("lr: [0.1\n", "x.yaml: not valid YAML at line 2, column 1: expected ',' or ']'"),
    ("- lr\n- 0.1\n", "x.yaml: expected a mapping of option: value (e.g. 'iters: 100'), got a list"),
    ("data: folder\ndata_root: d\ndata_options: {colour: 1}\n",
     "x.yaml: data_options: 'colour' is not an option of the 'folder' reader; its options: classes, mask_map, "
     "palette, exif_transpose"),
    ("best_metric: mIoU\n", "x.yaml: best_metric must be a validation metric of fcn8s_vgg16 (pixel_acc, mean_acc, "
                            "miou, fwiou"),
    ("device: gpu\n", "x.yaml: device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_bad_yaml_values_are_refused_by_the_cli_in_one_line_naming_file_and_option(text, message, tmp_path,
                                                                                   capsys):
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(SystemExit):
        cli.main(["train", "--config", str(tmp_path / "x.yaml"), "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"seglab train: error: {tmp_path}/{message}"), error
    assert "\n" not in error and not (tmp_path / "run").exists()  # refused before any work, nothing left behind


def test_an_unquoted_learning_rate_and_whole_numbers_written_as_floats_are_numbers(tmp_path):
    (tmp_path / "x.yaml").write_text("lr: 1e-3\niters: 1e4\nweight_decay: 1E-4\n")  # PyYAML reads them as strings
    config = load_config(tmp_path / "x.yaml")
    assert (config.lr, config.iters, config.weight_decay) == (0.001, 10000, 0.0001)


def test_a_negative_batch_size_flag_fails_at_once_instead_of_hanging(tmp_path):
    result = subprocess.run([sys.executable, "-m", "seglab", "train", "--batch-size", "-2", "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == "seglab train: error: batch_size must be a positive integer, got -2"


def test_an_unknown_reader_option_flag_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", "shapes", "--data-option", "colour=1", "--out", str(tmp_path / "run")])
    assert capsys.readouterr().err.strip() == ("seglab train: error: data_options: 'colour' is not an option of "
                                               "the 'shapes' reader; it takes none")


def test_last_pt_is_written_before_the_final_validation(tmp_path, monkeypatch):
    def failing_validation(self):
        raise RuntimeError("validation failed")

    monkeypatch.setattr(Trainer, "validate", failing_validation)
    with pytest.raises(RuntimeError, match="validation failed"):
        train(tiny_config(tmp_path, iters=3, ckpt_every=0))
    from seglab.io import safe_load
    assert safe_load(tmp_path / "run" / "last.pt")["step"] == 3  # the training survives the failed validation


def test_a_nan_before_any_checkpoint_says_no_checkpoint_was_written(tmp_path, monkeypatch):
    real_loss = losses.cross_entropy
    monkeypatch.setattr(losses, "cross_entropy", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    with pytest.raises(FloatingPointError) as error:
        train(tiny_config(tmp_path, iters=8, ckpt_every=4, val_split=None))
    assert "training stopped (no checkpoint was written yet)" in str(error.value)
    assert "last.pt" not in str(error.value) and not (tmp_path / "run" / "last.pt").exists()


def test_a_train_failing_before_anything_is_written_leaves_no_run_directory(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--model-option", "no_such_option=1", "--out", str(tmp_path / "run"), "--iters", "1"])
    assert "no_such_option" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_after_a_crash_drops_the_repeated_log_rows_and_a_finished_run_has_nothing_to_do(tmp_path,
                                                                                              monkeypatch, capsys):
    real_step = Trainer.train_step

    def crash_in_step_5(self, micro_batches):
        if self.step == 4:
            raise RuntimeError("crash")
        return real_step(self, micro_batches)

    monkeypatch.setattr(Trainer, "train_step", crash_in_step_5)
    with pytest.raises(RuntimeError, match="crash"):
        train(tiny_config(tmp_path, iters=6, ckpt_every=3, val_split=None))
    assert [row["step"] for row in read_log(tmp_path / "run")] == [1, 2, 3, 4]  # last.pt is at step 3
    monkeypatch.setattr(Trainer, "train_step", real_step)
    train(tiny_config(tmp_path, iters=6, ckpt_every=3, val_split=None, resume=True))
    assert [row["step"] for row in read_log(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert train(tiny_config(tmp_path, iters=6, ckpt_every=3, val_split=None, resume=True)) is None
    assert "already finished at step 6; nothing to do" in capsys.readouterr().out
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == log  # nothing validated or appended again
    assert json.loads(log.splitlines()[-1])["step"] == 6
