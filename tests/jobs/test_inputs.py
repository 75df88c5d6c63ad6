"""One odd input never sinks the run: odd names, collisions, symlinks, unreadable folders,
FIFOs, sockets and devices; a signal stops a run wherever it waits."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cache import load_index, validate_video_id
from extract.pipeline import VideoTask
from extract.samples import unprivileged
from jobs.inputs import glob_files, resolve_inputs
from tests.jobs.cli import ROOT, make_videos, run_cli


def resolve_videos(videos: str) -> list[VideoTask]:
    return resolve_inputs(videos).tasks


def touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_odd_names_get_valid_distinct_ids(tmp_path: Path) -> None:
    names = ["good.mp4", "..mp4", "A.mp4", "A.MP4", "é" * 120 + ".mp4"]
    for n in names:
        touch(tmp_path / n)
    tasks = resolve_videos(str(tmp_path))
    assert sorted(t.path.name for t in tasks) == sorted(names)  # every file kept
    ids = [t.video_id for t in tasks]
    assert len(set(ids)) == len(ids) and "good" in ids
    for vid in ids:
        assert validate_video_id(vid) == vid and len(vid) <= 100
    again = [t.video_id for t in resolve_videos(str(tmp_path))]
    assert again == ids  # stable


def test_list_naming_one_file_twice_is_one_input(tmp_path: Path) -> None:
    touch(tmp_path / "sub" / "r1.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\n  sub/r1.mp4  \nsub/../sub/r1.mp4\n")
    assert [t.video_id for t in resolve_videos(str(listing))] == [
        "r1"
    ]  # ids relative to the common parent


def test_folder_and_glob_agree_on_symlinks_and_loops_end(tmp_path: Path) -> None:
    touch(tmp_path / "real" / "a.mp4")
    top = tmp_path / "top"
    touch(top / "b.mp4")
    os.symlink(tmp_path / "real", top / "linked")
    os.symlink(top, top / "loop")  # a loop back to the top
    folder = {t.video_id for t in resolve_videos(str(top))}
    assert {"b", "linked/a"} <= folder
    globbed = {t.video_id for t in resolve_videos(str(top / "*" / "*.mp4"))}
    assert "linked/a" in {f"linked/{v}" for v in globbed} | globbed


def test_recursive_glob_through_a_symlink_loop_ends(tmp_path: Path) -> None:
    """The glob walks as a folder does: each folder once, so the loop ends and ``b`` is found
    once (through the loop it would also be ``loop/b``, ``loop/loop/b``, ...)."""
    top = tmp_path / "top"
    touch(top / "b.mp4")
    os.symlink(top, top / "loop")
    tasks = resolve_videos(str(top / "**" / "*.mp4"))
    assert [t.video_id for t in tasks] == ["b"]


def test_a_file_without_an_id_is_rejected_by_path(tmp_path: Path) -> None:
    touch(tmp_path / "root" / "a.mp4")
    stray = touch(tmp_path / "other" / "b.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("root/a.mp4\nother/b.mp4\n")
    found = resolve_inputs(str(listing), root=str(tmp_path / "root"))
    assert [t.video_id for t in found.tasks] == ["a"]
    assert list(found.rejected) == [str(stray)]
    assert "not under the input root" in found.rejected[str(stray)]


@pytest.mark.parametrize("mode", ["folder", "glob"])
def test_both_modes_warn_about_a_folder_they_cannot_read(
    caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    # Root reads every folder, so the walk runs as nobody (``unprivileged``), in a folder nobody
    # may enter (pytest's own tmp folders are 0700).
    top = Path(tempfile.mkdtemp(prefix="streamfeat-unreadable-"))
    locked = top / "locked"
    try:
        top.chmod(0o755)
        touch(top / "ok.mp4")
        touch(locked / "x.mp4")
        locked.chmod(0)
        arg = str(top) if mode == "folder" else str(top / "**" / "*.mp4")
        with caplog.at_level(logging.WARNING), unprivileged():
            tasks = resolve_videos(arg)
    finally:
        locked.chmod(0o755)
        shutil.rmtree(top)
    assert [t.video_id for t in tasks] == ["ok"]
    assert f"skipped {locked}: Permission denied" in caplog.text


def test_glob_mode_matches_what_glob_matches(tmp_path: Path) -> None:
    """The walk that replaces ``glob.glob`` (so that it warns and ends symlink loops) keeps its
    rules: ``*`` stays in one folder and skips dot files, ``**`` spans folders but not hidden
    ones, ``?`` and ``[..]`` match one character."""
    for name in [
        "a.mp4",
        "b.mkv",
        ".hidden.mp4",
        "s/c.mp4",
        "s/t/d.mp4",
        "s/.h/e.mp4",
        ".dot/f.mp4",
        "x1.mp4",
        "x22.mp4",
    ]:
        touch(tmp_path / name)
    for pattern in ["*.mp4", "**/*.mp4", "s/*.mp4", "s/**/*.mp4", "*/*.mp4", "x?.mp4", "[ab].*"]:
        spec = str(tmp_path / pattern)
        want = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        got = sorted(glob_files(spec, tmp_path))
        assert got == want, pattern


# --- inputs that are not files never hang (issue #22, item 8): real processes and signals ---


def extract_args(videos: str, store: Path, model: Path) -> list[str]:
    return [
        "job=extract",
        f"videos={videos}",
        f"store={store}",
        f"encoder.pretrained={model}",
        "job.decode.fps=2",
        "job.progress=false",
    ]


@pytest.mark.parametrize("mode", ["folder", "list", "glob"])
def test_fifos_sockets_and_devices_are_skipped_unopened(
    tmp_path: Path, tiny_siglip: Path, mode: str
) -> None:
    """Opening a FIFO blocks until a writer comes: the run must name it (and a socket, and a
    device reached by a symlink) as skipped with the reason, and extract the real videos."""
    videos = make_videos(tmp_path / "videos", 2, seconds=1.0)
    specials = {
        videos / "pipe.mp4": "a FIFO (named pipe)",
        videos / "sock.mp4": "a socket",
        videos / "null.mp4": "a character device",
    }
    os.mkfifo(videos / "pipe.mp4")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(videos / "sock.mp4"))
    os.symlink("/dev/null", videos / "null.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"videos/{p.name}\n" for p in sorted(videos.iterdir())))
    arg = {"folder": str(videos), "list": str(listing), "glob": str(videos / "*.mp4")}[mode]
    store = tmp_path / "s.zarr"
    # Today's code opens the FIFO of a list and waits for ever: the timeout fails the test.
    r = run_cli(*extract_args(arg, store, tiny_siglip), hydra_dir=tmp_path / "h", timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]  # the skipped inputs count as failed
    assert "Traceback" not in out
    for path, kind in specials.items():
        assert f"FAILED {path}: not a regular file: {kind} (skipped unopened)" in r.stdout, out
    assert "2 done" in r.stdout, out
    assert {v: e.status for v, e in load_index(store).videos.items()} == {
        "v0": "done",
        "v1": "done",
    }


def test_a_fifo_named_as_videos_is_one_error_line(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.mp4")
    with pytest.raises(ValueError, match=r"is a FIFO \(named pipe\), not a video"):
        resolve_inputs(str(tmp_path / "pipe.mp4"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_run_waiting_for_the_store_lock(
    tmp_path: Path, tiny_siglip: Path, sig: signal.Signals
) -> None:
    """Another process holds the store's creation lock (a slow creator on shared storage, a
    stuck one). The run waits for it inside the region where a signal only requests a stop; a
    blocking flock would resume after the signal and wait for ever. SIGTERM (to the process)
    and Ctrl-C (SIGINT to its process group, as a terminal sends it) must end it promptly with
    the one line and 128+N."""
    videos = make_videos(tmp_path / "videos", 1, seconds=1.0)
    store = tmp_path / "s.zarr"
    store.mkdir()
    lock = store / ".create.lock"
    hold = "import fcntl,os,sys,time;fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT);"
    hold += "fcntl.flock(fd,fcntl.LOCK_EX);print('held',flush=True);time.sleep(300)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True
    )
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *extract_args(str(videos), store, tiny_siglip),
        f"hydra.run.dir={tmp_path / 'h'}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc: subprocess.Popen[str] | None = None
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        wait_until_open(proc, lock)
        time.sleep(0.5)  # now waiting for the lock
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        t0 = time.monotonic()
        try:
            stdout, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{sig.name} did not stop a run waiting for {lock}")
        assert time.monotonic() - t0 < 10
    finally:
        for p in (proc, holder):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("interrupted:")]
    assert lines == ["interrupted: committed 0 frames; rerun the same command to resume"], stderr
    assert not (store / "zarr.json").exists()  # the holder's turn: nothing was created


def wait_until_open(proc: subprocess.Popen[str], path: Path, timeout: float = 120) -> None:
    """Until ``proc`` has ``path`` open (it opens the lock file just before locking it)."""
    deadline = time.monotonic() + timeout
    fds = Path(f"/proc/{proc.pid}/fd")
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for fd in fds.iterdir() if fds.exists() else []:
            try:
                if os.readlink(fd) == str(path):
                    return
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError(f"the run never opened {path}")
