"""The crawl CLI and its config handling."""

from __future__ import annotations

import subprocess
import sys

import pytest

from curation.crawl.config import CrawlConfig
from curation.seeds.registry import SeedSetsConfig
from manifests.config import ConfigError, load_config
from pipelines import crawl as cli
from pipelines.demo.loopback_web import LoopbackWeb, Route
from pipelines.demo.synthetic_images import encode, make_photo


def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("shard_size: 500\nfetch:\n  max_retries: 5\n  allowed_networks: [10.0.0.0/8]\n")
    overrides = ["process.max_side=256", "fetch.total_timeout_s=3", "fetch.connect_timeout_s=5e-1"]
    config = load_config(CrawlConfig, path, overrides)
    assert config.shard_size == 500 and config.fetch.max_retries == 5
    assert config.fetch.allowed_networks == ["10.0.0.0/8"]
    assert config.process.max_side == 256 and config.fetch.total_timeout_s == 3.0
    assert config.fetch.connect_timeout_s == 0.5  # YAML 1.1 reads 5e-1 as a string


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("shard_sise: 5\n", [], r"unknown key\(s\) \['shard_sise'\]"),
        ("fetch:\n  max_retries: many\n", [], "fetch.max_retries: expected int, found 'many'"),
        ("fetch: [1, 2]\n", [], "fetch: expected a mapping"),
        ("", ["fetch.total_timeout_s=soon"], "fetch.total_timeout_s: expected float, found 'soon'"),
        ("", ["process.max_side"], "expected key=value"),
        ("shard_size: [\n", [], "not valid YAML"),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(CrawlConfig, path, overrides)


def test_flags_map_to_config():
    args = cli.build_parser().parse_args(
        ["--urls", "u.txt", "--out", "o", "--allow-network", "127.0.0.0/8", "--allow-network",
         "10.0.0.0/8", "--max-side", "256", "--ignore-robots-directives", "--set", "shard_size=7"]
    )  # fmt: skip
    config = cli.config_from_args(args)
    assert config.fetch.allowed_networks == ["127.0.0.0/8", "10.0.0.0/8"]
    assert config.process.max_side == 256 and config.shard_size == 7
    assert config.fetch.disallowed_robots_directives == []
    assert not config.fetch.allow_private_networks


def test_cli_reports_bad_input_clearly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.crawl", "--urls", str(tmp_path / "none.txt"),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"error: {tmp_path / 'none.txt'}: no such input file" in proc.stderr


def test_shipped_default_yaml_matches_the_dataclass_defaults():
    assert load_config(CrawlConfig, "configs/crawl/default.yaml") == CrawlConfig()


def test_mapping_config_values_are_checked(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("roots: {in22k: /data/in22k}\n")
    assert load_config(SeedSetsConfig, path).roots == {"in22k": "/data/in22k"}
    path.write_text("roots: [/data/in22k]\n")
    with pytest.raises(ConfigError, match="s.yaml.roots: expected a mapping"):
        load_config(SeedSetsConfig, path)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--allow-network", "127.0.0.1/8"], "fetch.allowed_networks: '127.0.0.1/8' is not a net"),
        (["--domain-blocklist", "missing.txt"], "domain blocklist missing.txt: cannot read"),
    ],
)
def test_cli_refuses_bad_fetch_settings_before_crawling(tmp_path, flags, message):
    (tmp_path / "urls.txt").write_text("http://example.org/a.jpg\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.crawl", "--urls", str(tmp_path / "urls.txt"),
         "--out", str(tmp_path / "out"), *flags],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "out").exists()


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.parametrize("command", ["pipelines.build_lvd", "pipelines.crawl"])
def test_a_worker_process_imports_the_command_module_without_its_pipeline(command):
    # what multiprocessing does in every forkserver or spawn worker of a command run with -m
    # (multiprocessing.spawn._fixup_main_from_name): it runs the command's module again
    modules = _modules_after(
        f"import runpy; runpy.run_module({command!r}, run_name='__mp_main__', alter_sys=True)"
    )
    assert "pipelines" in modules  # the probe ran
    assert not {"torch", "curation.crawl.crawler", "aiohttp"} & modules


def test_crawl_workers_preload_what_a_shard_needs_and_not_the_input_readers():
    modules = _modules_after("import curation.worker_preload, curation.crawl.shard")
    assert {"curation.crawl.shard", "aiohttp", "cv2"} <= modules
    assert not {"curation.crawl.inputs", "warcio", "tqdm", "torch"} & modules


_CHILDREN_AFTER_START = """
import os, sys
from curation.local_runner import start_worker_server
start_worker_server({processes}, "curation.crawl.shard")
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{{pid}}/stat") as f:
            ppid = int(f.read().rpartition(")")[2].split()[1])
        with open(f"/proc/{{pid}}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\\0", b" ").decode()
    except (OSError, ValueError):  # gone meanwhile
        continue
    if ppid == os.getpid():
        print("child:", cmdline)
print("crawler imported here:", "curation.crawl.shard" in sys.modules)
"""


def test_the_crawl_command_preloads_the_module_of_the_crawl_task():
    from curation.crawl.shard import crawl_lane

    assert crawl_lane.__module__ == cli.CRAWL_TASKS  # a rename would preload nothing useful


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("processes, servers", [(2, 1), (1, 0)])
def test_the_crawl_command_starts_the_workers_server_first_when_it_will_use_workers(
    processes, servers
):
    probe = _CHILDREN_AFTER_START.format(processes=processes)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    children = [line for line in result.stdout.splitlines() if line.startswith("child:")]
    forkservers = [c for c in children if "multiprocessing.forkserver" in c]
    assert len(forkservers) == servers, result.stdout
    assert all("curation.crawl.shard" in c for c in forkservers)
    assert "crawler imported here: False" in result.stdout


def test_every_command_takes_config_then_shorthands_then_set(tmp_path):
    import argparse

    from curation.embed import EmbedConfig
    from manifests.config import add_config_arguments, config_from_arguments

    path = tmp_path / "e.yaml"
    path.write_text("batch_size: 8\nnum_workers: 1\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, "an EmbedConfig", shorthands={"workers": "num_workers"})
    args = parser.parse_args(["--config", str(path), "--workers", "3", "--set", "num_workers=4",
                              "--set", "device=cpu"])  # fmt: skip
    config = config_from_arguments(EmbedConfig, args, ["batch_size=16"])
    assert (config.batch_size, config.num_workers, config.device) == (16, 4, "cpu")
    alone = config_from_arguments(EmbedConfig, parser.parse_args(["--workers", "3"]))
    assert alone.num_workers == 3 and alone.batch_size == EmbedConfig().batch_size


def test_a_crawl_with_no_image_names_the_commonest_failure_and_its_remedy_works(tmp_path):
    body = encode(make_photo(3, 160, 120))
    with LoopbackWeb({f"/{i}.jpg": Route(body=body) for i in range(3)}) as web:
        (tmp_path / "urls.txt").write_text("\n".join(web.url(f"/{i}.jpg") for i in range(3)))
        command = [sys.executable, "-m", "pipelines.crawl", "--urls", str(tmp_path / "urls.txt"),
                   "--out", str(tmp_path / "out"), "--no-progress", "--processes", "1"]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert line == (f"error: {tmp_path / 'out'}: none of the 3 URLs gave an image (3 "
                        "blocked_private_address); pass --allow-private-networks (or "
                        "--allow-network CIDR) for a local web")  # fmt: skip
        advised = subprocess.run([*command, "--allow-private-networks"], capture_output=True,
                                 text=True, timeout=60)  # fmt: skip
    assert advised.returncode == 0, advised.stderr
    assert "ok:     3 (100.0%)" in advised.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "kmeans.k=-5",
            "--set kmeans.k=-5: CurationConfig.kmeans.k: expected at least 1 and at most "
            "1000000000, found -5",
        ),
        ("kmeans.kk=5", "--set kmeans.kk=5: CurationConfig.kmeans: unknown key(s) ['kk']"),
        (
            "dedup.copy.threshold=1.5",
            "copy.threshold: expected at least -1 and at most 1, found 1.5",
        ),
        ("crawl.fetch.total_timeout_s=0", "total_timeout_s: expected above 0, found 0.0"),
    ],
)
def test_values_are_checked_when_loaded_and_errors_name_the_override(override, message):
    from pipelines.curation_config import CurationConfig

    with pytest.raises(ConfigError) as error:
        load_config(CurationConfig, "configs/curation/demo.yaml", [override])
    assert message in str(error.value)
    assert "demo.yaml" not in str(error.value)  # the file is fine: the override is not


def test_a_bad_file_is_blamed_on_the_file_whatever_the_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("shard_size: 0\n")
    with pytest.raises(ConfigError, match=r"c.yaml.shard_size: expected at least 1, found 0"):
        load_config(CrawlConfig, path, ["processes=1"])
    assert load_config(CrawlConfig, path, ["shard_size=5"]).shard_size == 5  # fixed by --set


def test_ctrl_c_says_how_to_resume(capsys):
    from pipelines.cli import run_cli

    def interrupted() -> str:
        raise KeyboardInterrupt

    assert run_cli(interrupted) == 130
    assert capsys.readouterr().err == (
        "interrupted: what was committed is kept; rerun the same command to resume\n"
    )


@pytest.mark.parametrize("command", ["crawl", "build_lvd", "train"])
def test_an_output_path_that_is_a_file_is_one_line(tmp_path, command):
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:9/a.jpg\n")
    (tmp_path / "m.parquet").write_bytes(b"")
    out = tmp_path / "taken"
    out.write_text("a file, not a directory")
    args = {
        "crawl": ["pipelines.crawl", "--urls", str(tmp_path / "urls.txt"), "--processes", "1",
                  "--out", str(out)],
        "build_lvd": ["pipelines.build_lvd", "--config", "configs/curation/demo.yaml",
                      "--urls", str(tmp_path / "urls.txt"), "--out", str(out),
                      *[f"--seed-root={name}={tmp_path}" for name in
                        ("demo_sample", "demo_cluster", "demo_eval")]],
        "train": ["training.train", "--config", "configs/train/tiny_cpu.yaml", "--manifest",
                  str(tmp_path / "m.parquet"), "--output-dir", str(out)],
    }[command]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", *args, "--no-progress"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {out}: File exists", proc.stderr


COMMANDS = ["pipelines.build_lvd", "pipelines.crawl", "pipelines.seeds", "pipelines.embed",
            "pipelines.safety", "pipelines.dedup", "pipelines.retrieve", "training.train",
            "training.eval.knn"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_says_what_it_does_and_what_each_option_is(command, monkeypatch, capsys):
    import argparse
    import importlib

    shown = []
    monkeypatch.setattr(argparse.ArgumentParser, "print_help",
                        lambda self, file=None: shown.append(self))  # fmt: skip
    with pytest.raises(SystemExit):
        importlib.import_module(command).main(["--help"])
    parser = shown[0]
    assert parser.description and parser.description.rstrip()[-1] in ".)", parser.description
    assert "``python -m" not in parser.description.split(":")[0]  # not the usage line
    silent = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert silent == []


_BAR_AND_WARNINGS = """
import logging, sys, warnings
from tqdm import tqdm
from pipelines.cli import run_cli

def action():
    with tqdm(total=10, desc="shards", file=sys.stderr) as bar:
        bar.update(3)
        logging.getLogger("stage").warning("shard 3: one image unreadable")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        bar.update(7)
    return "done"

sys.exit(run_cli(action))
"""


def test_log_lines_and_warnings_print_above_a_progress_bar_not_through_it():
    proc = subprocess.run(
        [sys.executable, "-c", _BAR_AND_WARNINGS], capture_output=True, text=True, timeout=60
    )  # a process of its own: pytest's warning
    assert proc.returncode == 0, proc.stderr  # capture is not in the way there  # fmt: skip
    lines = proc.stderr.split("\n")
    for text in ("shard 3: one image unreadable", "a library's warning"):
        shown = next(x for x in lines if text in x).split("\r")[-1]  # as a terminal shows it
        assert "shards" not in shown and "%|" not in shown, shown  # a line of its own
