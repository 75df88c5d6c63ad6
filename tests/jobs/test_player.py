"""player.html in headless Chromium: it plays a video whatever its file name, and shows any model
or user text as text while its own script runs."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from extract.samples import make_video
from jobs.player import write_player

#: Texts that end, comment out or re-open a script element if embedded raw.
NASTY = [
    "<!--",
    "<script>",
    "</script>",
    "<!-- <script>",
    "</script><script>document.body.dataset.injected = 1</script>",
    "<!-- <script> </script> --> &amp; &lt;b&gt; ]]> \u2028 é 🎬 \"'`${x}",
]


def dump_dom(url: str, profile: Path) -> str:
    """The DOM of ``url`` after its scripts ran and the video's metadata loaded (headless)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (scripts/install.sh installs it)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=3000", f"--user-data-dir={profile}"]  # fmt: skip
    r = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "<body" in r.stdout, r.stderr[-2000:]
    return r.stdout


class Turns(HTMLParser):
    """The ``<li>`` turns of a dumped page as ``(attributes, text)``, and the body's attributes."""

    def __init__(self, dom: str) -> None:
        super().__init__(convert_charrefs=True)
        self.turns: list[tuple[dict[str, str | None], str]] = []
        self.body: dict[str, str | None] = {}
        self.status: tuple[dict[str, str | None], str] | None = None
        self._open: list[str] | None = None
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.body = dict(attrs)
        elif tag == "li":
            self.turns.append((dict(attrs), ""))
            self._open = []
        elif tag == "p" and dict(attrs).get("id") == "video-status":
            self.status = (dict(attrs), "")

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.append(data)
        elif self.status is not None and not self.status[1]:
            self.status = (self.status[0], data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "li" and self._open is not None:
            self.turns[-1] = (self.turns[-1][0], "".join(self._open))
            self._open = None


def test_the_player_plays_any_file_name_and_shows_any_text(tmp_path: Path) -> None:
    folder = tmp_path / "vidéos #2"
    folder.mkdir()
    video = make_video(
        folder / "my clip #1 100% é?.mp4", seconds=2.0, fps=10, width=64, height=48
    ).path
    timeline: list[dict[str, Any]] = [
        {"time": i * 0.1, "role": "user" if i % 2 == 0 else "assistant", "text": text}
        for i, text in enumerate(NASTY)
    ]
    (tmp_path / "run").mkdir()
    page = write_player(tmp_path / "run" / "player.html", str(video), timeline)
    # The src is a URL that names the file: resolved against the page, it is the video.
    src = re.search(r'<video [^>]*src="([^"]*)"', page.read_text())
    assert src is not None
    url = urllib.parse.urljoin(page.as_uri(), src.group(1).replace("&amp;", "&"))
    assert Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path)) == video

    dom = Turns(dump_dom(f"{page.as_uri()}#t=9", tmp_path / "profile"))
    assert dom.body.get("data-video") == "ready", dom.body  # the browser loaded the file
    assert dom.body.get("data-shown") == str(len(NASTY))  # the page's own script ran to the end
    assert "data-injected" not in dom.body
    want = [
        (e["role"], f"[{e['time']:.1f} s]{e['role'].capitalize()}:{e['text']}") for e in timeline
    ]
    assert [(attrs["class"], text) for attrs, text in dom.turns] == want  # literally


def test_the_player_says_when_the_video_cannot_be_played(tmp_path: Path) -> None:
    page = write_player(tmp_path / "player.html", str(tmp_path / "gone.mp4"), [])
    dom = Turns(dump_dom(page.as_uri(), tmp_path / "profile"))
    assert dom.body.get("data-video") == "error" and dom.status is not None
    attrs, text = dom.status
    assert "hidden" not in attrs and text == (
        "The video cannot be played: gone.mp4 (moved, or a format this browser does not play)."
    )


@pytest.mark.parametrize("name", ["a:b.mp4", "x?y=1.mp4", "50%25.mp4", "#.mp4"])
def test_a_relative_src_is_never_a_scheme_query_escape_or_fragment(
    tmp_path: Path, name: str
) -> None:
    from jobs.player import video_src

    src = video_src(tmp_path / "player.html", str(tmp_path / name))
    assert urllib.parse.urlparse(src).scheme == "" and "?" not in src and "#" not in src
    assert urllib.parse.unquote(src) == name
