"""A workflow drawn for the task page (`workflow_view.py` gives the data), as inline SVG: a box per member,
coloured by its state like the state badges, left to right in the order they run, with an arrow from each
dependency; then the members' table.

Server-side and script-free, every text escaped: the task page embeds it as it is. Each box links to its
task's page and has a tooltip (`<title>`) with its task name, state and reason.
"""

from __future__ import annotations

from html import escape
from typing import Any

#: Fill and outline per state (the fills are the state badges' colours in assets.py).
COLOURS = {
    "SUCCESS": ("#d5f0dd", "#3a8f55"),
    "FAILED": ("#f7d7d7", "#b73a3a"),
    "INTERRUPTED": ("#f7d7d7", "#b73a3a"),
    "RUNNING": ("#dbe7fb", "#3a66b7"),
    "RETRYING": ("#fbefd0", "#a07a1c"),
    "SCHEDULED": ("#fbefd0", "#a07a1c"),
    "CANCELLED": ("#e9e1f5", "#6f559c"),
    "PENDING": ("#e3e6ea", "#6b7684"),
    "WAITING": ("#ffffff", "#9aa3ad"),
}
#: Edge styles: required dependencies solid, optional ones dashed, a finally node's dotted.
EDGES = {"required": "", "optional": ' stroke-dasharray="6 4"', "finally": ' stroke-dasharray="2 3"'}

WIDTH, HEIGHT, GAP_X, GAP_Y, PAD = 168, 46, 56, 18, 12


def workflow_svg(view: dict[str, Any]) -> str:
    """The SVG picture of a `workflow_view` result."""
    nodes = view["nodes"]
    per_layer: dict[int, int] = {}
    for node in nodes:
        per_layer[node["layer"]] = max(per_layer.get(node["layer"], 0), node["row"] + 1)
    tallest = max(per_layer.values(), default=1)
    places: dict[str, tuple[float, float]] = {}
    for node in nodes:
        offset = (tallest - per_layer[node["layer"]]) * (HEIGHT + GAP_Y) / 2
        x = PAD + node["layer"] * (WIDTH + GAP_X)
        y = PAD + offset + node["row"] * (HEIGHT + GAP_Y)
        places[node["name"]] = (x, y)
    width = PAD * 2 + (max(per_layer, default=0) + 1) * (WIDTH + GAP_X) - GAP_X
    height = PAD * 2 + tallest * (HEIGHT + GAP_Y) - GAP_Y
    parts = [
        f'<svg class="workflow-graph" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}" '
        f'aria-label="{escape(view["kind"])} {escape(view["id"])}: {escape(view["status"])}">',
        '<defs><marker id="wf-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7"'
        ' orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#6b7684"/></marker></defs>',
    ]
    for edge in view["edges"]:
        if edge.get("implied") or edge["from"] not in places or edge["to"] not in places:
            continue
        (x1, y1), (x2, y2) = places[edge["from"]], places[edge["to"]]
        x1, y1, y2 = x1 + WIDTH, y1 + HEIGHT / 2, y2 + HEIGHT / 2
        bend = GAP_X / 2
        parts.append(
            f'<path class="wf-edge wf-{escape(edge["kind"])}" data-from="{escape(edge["from"])}" '
            f'data-to="{escape(edge["to"])}" d="M{x1:.0f},{y1:.0f} C{x1 + bend:.0f},{y1:.0f} '
            f'{x2 - bend:.0f},{y2:.0f} {x2 - 2:.0f},{y2:.0f}" fill="none" stroke="#6b7684" stroke-width="1.5"'
            f'{EDGES.get(edge["kind"], "")} marker-end="url(#wf-arrow)"/>'
        )
    for node in nodes:
        parts.append(_node(node, *places[node["name"]]))
    parts.append("</svg>")
    return "".join(parts)


def _node(node: dict[str, Any], x: float, y: float) -> str:
    status = str(node["status"])
    fill, stroke = COLOURS.get(status, COLOURS["PENDING"])
    reason = f" ({node['reason']})" if node.get("reason") else ""
    label = f"{node['name']}{' (finally)' if node['finally'] else ''}"
    tip = f"{label}: {node['task'] or 'not created yet'}, {status}{reason}"
    dashed = ' stroke-dasharray="4 3"' if status == "WAITING" else ""
    border = 2.5 if node["finally"] else 1.5
    return (
        f'<a href="/tasks/{escape(node["id"])}" class="wf-node" data-node="{escape(node["name"])}" '
        f'data-status="{escape(status)}"><title>{escape(tip)}</title>'
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{WIDTH}" height="{HEIGHT}" rx="7" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="{border}"{dashed}/>'
        f'<text x="{x + 10:.0f}" y="{y + 19:.0f}" font-size="13" font-weight="600" fill="#1d2733">'
        f"{escape(_clip(label, 22))}</text>"
        f'<text x="{x + 10:.0f}" y="{y + 36:.0f}" font-size="11" fill="#4a5563">'
        f"{escape(_clip(status + reason, 26))}</text></a>"
    )


def _clip(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "\u2026"


def legend() -> str:
    """The key under a picture: the states' colours and the edge styles."""
    states = "".join(
        f'<span class="wf-key"><svg width="14" height="14" aria-hidden="true"><rect x="1" y="1" width="12" '
        f'height="12" rx="3" fill="{fill}" stroke="{stroke}"/></svg>{escape(state.lower())}</span>'
        for state, (fill, stroke) in COLOURS.items()
        if state not in ("INTERRUPTED", "SCHEDULED")
    )
    edges = "".join(
        f'<span class="wf-key"><svg width="30" height="10" aria-hidden="true"><line x1="0" y1="5" x2="30" '
        f'y2="5" stroke="#6b7684" stroke-width="1.5"{style}/></svg>{escape(kind)}</span>'
        for kind, style in EDGES.items()
    )
    return f'<p class="wf-legend">{states}{edges}</p>'


def workflow_section(view: dict[str, Any]) -> str:
    """The task page's Workflow section: the picture, its key, and the members with their states."""
    rows = "".join(
        f"<tr><td>{escape(node['name'])}</td><td>{escape(node['task'])}</td>"
        f'<td><span class="badge st-{escape(node["status"])}">{escape(node["status"])}</span>'
        f"{escape(' (' + node['reason'] + ')' if node.get('reason') else '')}</td>"
        f'<td class="mono"><a href="/tasks/{escape(node["id"])}">{escape(node["id"])}</a></td></tr>'
        for node in view["nodes"]
    )
    more = f"<p>and {view['more']} more members not shown</p>" if view["more"] else ""
    return (
        f'<section id="workflow" class="workflow"><h2>Workflow</h2>'
        f"<p>{escape(view['kind'])} <code>{escape(view['id'])}</code>: "
        f'<span class="badge st-{escape(view["status"])}" id="workflow-status">{escape(view["status"])}</span></p>'
        f'<div class="wf-picture">{workflow_svg(view)}</div>{legend()}'
        f'<table class="wf-members"><thead><tr><th>Member</th><th>Task</th><th>State</th><th>Id</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>{more}</section>"
    )


WORKFLOW_STYLES = r"""
.workflow .wf-picture { overflow-x: auto; border: 1px solid #e3e6ea; background: #fafbfc; padding: 6px; }
.workflow svg.workflow-graph { display: block; max-width: none; }
.workflow .wf-node:hover rect { stroke-width: 3; }
.wf-legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; color: #4a5563; }
.wf-key { display: inline-flex; align-items: center; gap: 4px; }
.wf-members { border-collapse: collapse; font-size: 13px; }
.wf-members th, .wf-members td { text-align: left; padding: 2px 10px 2px 0; border-bottom: 1px solid #eef0f2; }
"""
