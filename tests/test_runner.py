"""The runner: stale/fresh detection, parameter validation, failing chapters, artifacts, metrics."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import nbformat
import pytest

from conftest import write_notebook
from llmbook.book import artifacts, cli, profiles, report, runner

TOY_PARAMETERS = 'profile = "cpu"\nparams = {}\nruns_dir = "runs"\ncache_dir = None'
TOY_CELL = """
from llmbook.book.notebook import open_chapter
cfg, run = open_chapter("toy", profile, params, runs_dir=runs_dir, cache_dir=cache_dir)
run.record("answer", 6 * 7)
"""


@pytest.fixture
def book(tmp_path: Path) -> runner.BookPaths:
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    write_notebook(tmp_path / "chapters" / "01_toy.ipynb", TOY_PARAMETERS, TOY_CELL)
    write_notebook(
        tmp_path / "chapters" / "02_broken.ipynb",
        'profile = "cpu"',
        "x = 1",
        "y = x / 0  # the third cell raises",
        "z = 2",
    )
    return runner.BookPaths.at(tmp_path)


def test_discover_and_find(book: runner.BookPaths) -> None:
    assert [c.stem for c in runner.discover(book)] == ["01_toy", "02_broken"]
    for key in ("toy", "1", "01", "01_toy"):
        assert runner.find_chapter(book, key).name == "toy"
    with pytest.raises(profiles.ParameterError, match="no chapter 'nope'; chapters: toy, broken"):
        runner.find_chapter(book, "nope")


def test_run_records_metrics_then_skips_when_fresh(book: runner.BookPaths) -> None:
    chapter = runner.find_chapter(book, "toy")
    config = profiles.resolve("toy", "smoke")
    assert runner.state(chapter, config, book) == "never run"
    first = runner.run_chapter(chapter, config, book, progress=False)
    assert first.executed and first.output.exists()
    injected = [c for c in nbformat.read(first.output, as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "hide-input" in injected[0].metadata.tags  # folded on the page
    assert report.load_metrics("toy", "smoke", book.runs_dir) == {"answer": 42}
    assert runner.state(chapter, config, book) == "fresh"
    second = runner.run_chapter(chapter, config, book, progress=False)
    assert not second.executed
    # Another profile, an edited notebook, a deleted executed copy: each makes the chapter stale.
    assert runner.state(chapter, profiles.resolve("toy", "cpu"), book) == "stale"
    chapter.source.write_text(chapter.source.read_text().replace("6 * 7", "7 * 6"))
    assert runner.state(chapter, config, book) == "stale"
    runner.run_chapter(chapter, config, book, progress=False)
    first.output.unlink()
    assert runner.state(chapter, config, book) == "stale"


def test_run_hash_covers_library_source(book: runner.BookPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    chapter = runner.find_chapter(book, "toy")
    config = profiles.resolve("toy", "smoke")
    before = runner.run_hash(chapter, config)
    monkeypatch.setattr(runner, "library_hash", lambda: "edited library")
    assert runner.run_hash(chapter, config) != before


def test_failing_chapter_names_chapter_cell_and_error(book: runner.BookPaths) -> None:
    chapter = runner.find_chapter(book, "broken")
    config = profiles.resolve("broken", "smoke")
    with pytest.raises(runner.ChapterFailed) as failure:
        runner.run_chapter(chapter, config, book, progress=False)
    assert failure.value.chapter == "broken"
    assert failure.value.cell == 3
    assert "ZeroDivisionError" in str(failure.value) and "cell 3" in str(failure.value)
    assert runner.state(chapter, config, book) == "failed"
    assert runner.last_run(chapter, book)["status"] == "failed"


def test_cli_failing_chapter_exit_code(book: runner.BookPaths, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--root", str(book.site_root), "run", "broken", "--profile", "smoke"])
    assert code == 1
    assert "chapter 'broken' failed in cell 3" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-p", "vocab_size", "12"], "parameter vocab_size=12: must be at least 257"),
        (["-p", "vocab", "1000"], "chapter 'tokenization': no parameter 'vocab'; allowed: ["),
        (["-p", "vocab_size", "big"], "parameter vocab_size='big': expected int, got str"),
        (["-p", "vocab_size", "1.5"], "parameter vocab_size=1.5: expected int, got float"),
        (["-p", "subword_mb", "true"], "parameter subword_mb=True: expected float, got a bool"),
        (["-p", "sweep_vocab_sizes", "[300]"], "sweep_vocab_sizes=(300,): needs two or more sizes"),
    ],
)
def test_cli_rejects_bad_parameters_before_running(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    code = cli.main(["--root", str(repo), "run", "tokenization", *arguments])
    assert code == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert error.count("\n") == 1  # one line, no traceback


def test_cli_rejects_unknown_profile_and_chapter(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--root", str(repo), "run", "tokenization", "--profile", "laptop"])
    assert exit_.value.code == 2
    assert cli.main(["--root", str(repo), "run", "tokenisation"]) == 2
    assert "no chapter 'tokenisation'" in capsys.readouterr().err


@pytest.mark.parametrize("profile", ["gpu", "multi-gpu"])
def test_cli_refuses_a_gpu_profile_without_gpus(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    monkeypatch.setattr(profiles, "cuda_device_count", lambda: 0)  # this host, without its GPUs if it has some
    code = cli.main(["--root", str(repo), "run", "attention", "--profile", profile])
    assert code == 2
    error = capsys.readouterr().err
    assert f"profile {profile!r} needs" in error and "this host has 0; use --profile cpu" in error, error
    assert error.count("\n") == 1


def test_require_hardware_counts_gpus() -> None:
    profiles.require_hardware("cpu", cuda_devices=0)
    profiles.require_hardware("gpu", cuda_devices=1)
    with pytest.raises(profiles.HardwareError, match="needs 2 CUDA GPUs and this host has 1; use --profile gpu"):
        profiles.require_hardware("multi-gpu", cuda_devices=1)


def test_each_parameter_is_declared_once_with_its_profile_values() -> None:
    from llmbook.book.profiles.attention import AttentionChapterConfig

    smoke, cpu, gpu = (AttentionChapterConfig.for_profile(p) for p in ("smoke", "cpu", "gpu"))
    assert (smoke.d_model, cpu.d_model, gpu.d_model) == (64, 96, 512)
    assert AttentionChapterConfig().d_model == 96  # the plain default is the cpu value
    assert AttentionChapterConfig.for_profile("multi-gpu").d_model == 512  # multi-gpu falls back to gpu
    assert smoke.rope_factor == gpu.rope_factor == 4.0  # a plain default holds in every profile
    for name in profiles.CHAPTER_CONFIGS:
        for profile in profiles.PROFILES:
            assert profiles.resolve(name, profile).profile == profile  # every profile validates


def test_profile_resolution_types_and_overrides() -> None:
    config = profiles.resolve("tokenization", "smoke", vocab_size=1000, train_mb_en=1)
    assert config.vocab_size == 1000 and config.train_mb_en == 1.0 and isinstance(config.train_mb_en, float)
    config_class = profiles.config_class("tokenization")
    no_override = profiles.resolve("tokenization", "smoke", vocab_size=None)  # None: keep the profile's value
    assert no_override.vocab_size == config_class.for_profile("smoke").vocab_size
    assert config_class.parse_value("sweep_vocab_sizes", "[300, 400]") == (300, 400)
    assert config_class.parse_value("hub_dataset_zh", "None") is None
    with pytest.raises(profiles.ParameterError, match="no profile 'laptop'"):
        profiles.resolve("tokenization", "laptop")


def test_artifact_cache_hit_and_rebuild(tmp_path: Path) -> None:
    builds: list[Path] = []

    def build(directory: Path) -> None:
        builds.append(directory)
        (directory / "vocab.txt").write_text("a b c")

    config = {"vocab_size": 3}
    first = artifacts.get_or_build("toy_tokenizer", config, build, root=tmp_path)
    second = artifacts.get_or_build("toy_tokenizer", config, build, root=tmp_path)
    assert (first.hit, second.hit, len(builds)) == (False, True, 1)
    assert second.path == first.path and (second.path / "vocab.txt").read_text() == "a b c"
    assert artifacts.manifest(second)["config"] == config
    other = artifacts.get_or_build("toy_tokenizer", {"vocab_size": 4}, build, root=tmp_path)
    assert other.path != first.path and not other.hit
    # A copy without its manifest (an interrupted build) is rebuilt, not trusted.
    (first.path / artifacts.MANIFEST).unlink()
    rebuilt = artifacts.get_or_build("toy_tokenizer", config, build, root=tmp_path)
    assert not rebuilt.hit and (rebuilt.path / artifacts.MANIFEST).exists() and len(builds) == 3


def test_artifact_built_once_when_two_need_it_at_once(tmp_path: Path) -> None:
    builds: list[int] = []
    started = threading.Event()

    def build(directory: Path) -> None:
        builds.append(1)
        started.set()
        time.sleep(0.5)  # the second caller arrives while this build runs
        (directory / "weights.bin").write_bytes(b"\1")

    results: list[artifacts.Artifact] = []
    first = threading.Thread(target=lambda: results.append(artifacts.get_or_build("model", {}, build, root=tmp_path)))
    first.start()
    assert started.wait(10)
    second = artifacts.get_or_build("model", {}, build, root=tmp_path)
    first.join()
    assert len(builds) == 1 and second.hit and not results[0].hit and second.path == results[0].path


def test_artifact_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def build(directory: Path) -> None:
        (directory / "half.bin").write_bytes(b"\0")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        artifacts.get_or_build("broken", {}, build, root=tmp_path)
    assert list((tmp_path / "broken").iterdir()) == []


def test_report_record_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = report.start("toy", profiles.resolve("toy", "smoke"), tmp_path)
    run.record("ratio", 0.5, glue=False)
    with pytest.raises(ValueError, match="must be an identifier"):
        run.record("bad name", 1, glue=False)
    with pytest.raises(ValueError, match="non-finite"):
        run.record("loss", float("nan"), glue=False)
    saved = json.loads((tmp_path / "toy" / "smoke" / "metrics.json").read_text())
    assert saved["metrics"] == {"ratio": 0.5} and saved["config"]["profile"] == "smoke"


def test_cli_list_run_and_export(book: runner.BookPaths, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(book.site_root)
    assert cli.main(["--root", root, "list", "--profile", "smoke"]) == 0
    assert "01_toy" in (listing := capsys.readouterr().out) and "never run" in listing
    assert cli.main(["--root", root, "run", "toy", "--profile", "smoke"]) == 0
    assert "executed in" in capsys.readouterr().out
    assert cli.main(["--root", root, "run", "1", "--profile", "smoke"]) == 0
    assert "fresh, not executed again" in capsys.readouterr().out
    cli.main(["--root", root, "list", "--profile", "smoke"])
    assert "01_toy" in (listing := capsys.readouterr().out) and "fresh" in listing
    out = book.site_root / "exports"
    assert cli.main(["--root", root, "export", "toy", "--to", "script", "--output-dir", str(out)]) == 0
    assert "run.record" in (out / "01_toy.py").read_text()
    assert cli.main(["--root", root, "export", "broken", "--output-dir", str(out)]) == 1
    assert "run `llmbook run broken` first" in capsys.readouterr().err
