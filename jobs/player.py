"""``player.html``: the streamed video in an HTML5 player with the turns appearing at their times.

One self-contained page that opens from disk (no server): the video is referenced by a URL
relative to the page (absolute when on another drive), percent-encoded so any file name works
(spaces, ``#``, ``%``, non-ASCII); the turns are embedded as JSON with ``<``, ``>`` and ``&``
escaped, so no text (``<!--``, ``</script>``) can end or re-open the script element, and shown as
text nodes; a small script shows every turn whose time is at or before the player's current
time, on play and on seek. ``player.html#t=12`` opens at 12 s. The page says when the video cannot
be played (``body[data-video]``: ``loading``, ``ready``, ``error`` or ``none``).
"""

from __future__ import annotations

import html
import json
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamfeat: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; display: flex; gap: 1.5em; }}
#left {{ flex: 0 0 auto; }} video {{ width: 640px; max-width: 60vw; background: #000; }}
#turns {{ flex: 1 1 auto; max-height: 90vh; overflow-y: auto; list-style: none; padding: 0; }}
#turns li {{ margin: 0 0 .6em; padding: .5em .7em; border-radius: 6px; }}
#turns li.user {{ background: #e8f0fe; }} #turns li.assistant {{ background: #e6f4ea; }}
#turns li[hidden] {{ display: none; }}
.time {{ color: #555; font-variant-numeric: tabular-nums; margin-right: .4em; }}
.role {{ font-weight: 600; margin-right: .3em; }}
</style></head>
<body>
<div id="left"><video id="video" controls preload="metadata" src="{src}"></video>
<p>Time: <span id="now">0.0</span> s &middot; turns shown: <span id="count">0</span>
of {total}</p><p>{title}</p><p id="video-status" hidden></p></div>
<ul id="turns"></ul>
<script id="timeline" type="application/json">{timeline}</script>
<script>
const turns = JSON.parse(document.getElementById("timeline").textContent);
const list = document.getElementById("turns");
const video = document.getElementById("video");
function videoState(state) {{
  document.body.dataset.video = state;
  const status = document.getElementById("video-status");
  status.hidden = state !== "error";
  status.textContent = "The video cannot be played: " + video.getAttribute("src") +
    " (moved, or a format this browser does not play).";
}}
video.addEventListener("loadedmetadata", () => videoState("ready"));
video.addEventListener("error", () => videoState("error"));
videoState(!video.getAttribute("src") ? "none" : video.error ? "error"
           : video.readyState >= 1 ? "ready" : "loading");
const items = turns.map((t) => {{
  const li = document.createElement("li");
  li.className = t.role; li.dataset.t = t.time; li.hidden = true;
  const time = document.createElement("span"); time.className = "time";
  time.textContent = "[" + t.time.toFixed(1) + " s]";
  const role = document.createElement("span"); role.className = "role";
  role.textContent = t.role === "user" ? "User:" : "Assistant:";
  li.append(time, role, document.createTextNode(t.text));
  list.appendChild(li); return li;
}});
function show(now) {{
  let n = 0;
  for (const li of items) {{ li.hidden = Number(li.dataset.t) > now + 1e-6; if (!li.hidden) n++; }}
  document.getElementById("now").textContent = now.toFixed(1);
  document.getElementById("count").textContent = n;
  document.body.dataset.shown = n;
}}
function fromHash() {{
  const m = /t=([0-9.]+)/.exec(location.hash);
  if (!m) return;
  const t = Number(m[1]);
  show(t);  // at once, even before the video's metadata has loaded
  try {{ video.currentTime = t; }} catch (e) {{}}
}}
for (const ev of ["timeupdate", "seeked", "seeking"]) {{
  video.addEventListener(ev, () => show(video.currentTime));
}}
window.addEventListener("hashchange", fromHash);
show(0); fromHash();
</script></body></html>
"""


def video_src(page: Path, video: str | None) -> str:
    """The ``src`` URL that finds ``video`` from the page on disk (relative when possible),
    each path segment percent-encoded (UTF-8): ``#``, ``%``, ``?``, ``:`` and spaces are then
    part of the file name, never a fragment, an escape, a query or a scheme."""
    if not video:
        return ""
    target = Path(video).expanduser().resolve()
    try:
        rel = os.path.relpath(target, page.parent.resolve())
    except ValueError:  # another drive
        return target.as_uri()  # pathlib percent-encodes a file: URI
    return "/".join(urllib.parse.quote(part, safe="") for part in rel.split(os.sep))


def script_json(value: Any) -> str:
    """``value`` as JSON safe inside a ``<script>`` element: ``<``, ``>`` and ``&`` as ``\\u``
    escapes, so no text can close the element or open a comment or a nested script in it."""
    text = json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_player(page: Path, video: str | None, timeline: Sequence[dict[str, Any]]) -> Path:
    """Write ``page``: ``video`` in a player and ``timeline``'s turns at their times."""
    page.write_text(
        PAGE.format(
            title=html.escape(Path(video).name if video else "(no source video)"),
            src=html.escape(video_src(page, video), quote=True),
            total=len(timeline),
            timeline=script_json([dict(t) for t in timeline]),
        ),
        encoding="utf-8",
    )
    return page
