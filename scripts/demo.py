"""`make demo` (``python -m scripts.demo``): sample videos -> extract -> status -> verify,
printing where the store is.

Uses the real default encoder (google/siglip-large-patch16-384) when its weights can be had:
from $STREAMFEAT_SIGLIP (a local checkpoint directory) or the hub. Otherwise (offline machines)
it builds a small random-init SigLIP locally and says so: the features are then meaningless,
but every other part of the pipeline is the real one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from extract.encoders import hub_unreachable
from extract.samples import lavfi_video
from extract.tiny import save_tiny_siglip

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
DEFAULT = "google/siglip-large-patch16-384"

# (name, lavfi source, seconds): landscape 720p, portrait phone-like, 29.97 fps odd size.
SAMPLES = [
    ("kitchen/cooking.mp4", "testsrc2=size=1280x720:rate=30", 20),
    ("phone/portrait.mp4", "testsrc2=size=360x640:rate=30", 8),
    ("ntsc/odd_2997.mp4", "mandelbrot=size=322x182:rate=30000/1001", 6.5),
]


def make_videos(out: Path) -> None:
    for name, src, seconds in SAMPLES:
        path = out / name
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = lavfi_video(path, src, seconds)
        print(f"demo: made {path.relative_to(ROOT)} ({' '.join(cmd)})")


def default_available() -> bool:
    """The default weights can be had: the hub answers, or they are in the local hub cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(DEFAULT, "config.json"), str):
        return True
    return not constants.is_offline_mode() and hub_unreachable() is None


def pick_encoder() -> str:
    local = os.environ.get("STREAMFEAT_SIGLIP")
    if local:
        print(f"demo: encoder = SigLIP checkpoint from $STREAMFEAT_SIGLIP={local}")
        return local
    if default_available():
        print(f"demo: encoder = {DEFAULT} from the hub (or its local cache)")
        return DEFAULT
    tiny = DEMO / "random-siglip"
    if not (tiny / "config.json").exists():
        save_tiny_siglip(tiny)
    print(
        f"demo: NOTE the hub is unreachable, {DEFAULT} is not in the local hub cache and "
        f"$STREAMFEAT_SIGLIP is unset, so the demo uses a "
        f"small RANDOMLY INITIALISED SigLIP built locally at {tiny.relative_to(ROOT)} (2 layers, "
        f"width 64, 384 px, 16 px patches): features are meaningless, the pipeline is real. "
        f"Set STREAMFEAT_SIGLIP=/path/to/siglip-large-patch16-384 for real features."
    )
    return str(tiny)


def run(*args: str) -> int:
    cmd = [sys.executable, str(ROOT / "run.py"), *args]
    print("demo: $ python run.py " + " ".join(args), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def main() -> int:
    videos, store = DEMO / "videos", DEMO / "demo.zarr"
    make_videos(videos)
    pretrained = pick_encoder()
    common = [f"store={store}", "hydra.run.dir=.demo/hydra", "hydra.output_subdir=null"]
    rc = run("job=extract", f"videos={videos}", f"encoder.pretrained={pretrained}", *common)
    rc |= run("job=status", *common)
    rc |= run("job=verify", *common)
    print(f"demo: {'OK' if rc == 0 else 'FAILED'}; the store is {store}")
    print(
        "demo: read it in Python: from cache import open_store; "
        f"s = open_store('{store}'); tokens, pts = s.read(s.video_ids()[0], 0, 4)"
    )
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
