"""`report.md` and a self-contained `report.html` (figures embedded as base64 PNG).

The report is a list of blocks (headings, paragraphs, tables, figures, verbatim Markdown
tables) rendered twice: Markdown that points at the PNGs beside it, and HTML with each PNG
inlined, so the HTML file alone carries the whole report.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from artifact.core.io import atomic_write_text
from artifact.core.tables import markdown_table
from artifact.report.figures import Figure


@dataclass
class Report:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", items))

    def table(self, header: list[str], rows: list[list[object]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def pipe_table(self, text: str) -> None:
        """A table already in Markdown (pipe) syntax."""
        header, *rest = [line for line in text.strip().splitlines() if line.strip()]
        cells = [_split_row(header)]
        body = [_split_row(line) for line in rest[1:]]
        self.blocks.append(("table", (cells[0], body)))

    def figure(self, fig: Figure) -> None:
        self.blocks.append(("figure", fig))

    # --- rendering ----------------------------------------------------------------------------

    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value  # type: ignore[misc]
                out += ["#" * level + " " + text, ""]
            elif kind == "para":
                out += [str(value), ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in value] + [""]  # type: ignore[union-attr]
            elif kind == "table":
                header, rows = value  # type: ignore[misc]
                cells = [[str(c) for c in row] for row in rows]
                out += [markdown_table(cells, [str(h) for h in header]).rstrip("\n"), ""]
            elif kind == "figure":
                fig: Figure = value  # type: ignore[assignment]
                rel = fig.path.relative_to(base) if fig.path.is_relative_to(base) else fig.path
                out += [
                    f"![Fig. {fig.number}: {fig.title}]({rel.as_posix()})",
                    "",
                    f"*Fig. {fig.number}: {fig.title}.* {fig.caption}",
                    "",
                ]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "heading":
                level, text = value  # type: ignore[misc]
                slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
                body.append(f'<h{level} id="{slug}">{_inline(text)}</h{level}>')
            elif kind == "para":
                body.append(f"<p>{_inline(str(value))}</p>")
            elif kind == "bullets":
                items = "".join(f"<li>{_inline(i)}</li>" for i in value)  # type: ignore[union-attr]
                body.append(f"<ul>{items}</ul>")
            elif kind == "table":
                header, rows = value  # type: ignore[misc]
                head = "".join(f"<th>{_inline(str(h))}</th>" for h in header)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>"
                    for row in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "figure":
                fig: Figure = value  # type: ignore[assignment]
                data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
                body.append(
                    f'<figure id="fig-{fig.number}"><img alt="Fig. {fig.number}" '
                    f'src="data:image/png;base64,{data}"/><figcaption><b>Fig. {fig.number}: '
                    f"{html.escape(fig.title)}.</b> {_inline(fig.caption)}</figcaption></figure>"
                )
        return HTML_TEMPLATE.format(title=html.escape(self.title), body="\n".join(body))

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        md_path, html_path = out_dir / "report.md", out_dir / "report.html"
        atomic_write_text(md_path, self.markdown(out_dir))
        atomic_write_text(html_path, self.html())
        return md_path, html_path


def _split_row(line: str) -> list[str]:
    line = line.strip().strip("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


def _inline(text: str) -> str:
    """Escape, then the little Markdown the report uses: **bold**, *italic*, `code`."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![*\w])\*([^*]+)\*(?!\w)", r"<i>\1</i>", out)
    return out


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; text-align: left; }}
th {{ background: #f3f3f3; }}
figure {{ margin: 1.5em 0; }}
figure img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-size: 0.92em; color: #444; margin-top: 0.4em; }}
code {{ background: #f5f5f5; padding: 0 0.2em; }}
</style></head>
<body>
{body}
</body></html>
"""
