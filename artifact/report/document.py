"""`report.md` and a self-contained `report.html` (figures embedded as base64 PNG).

The report is a list of blocks (headings, paragraphs, tables, figures, verbatim Markdown
tables) rendered twice: Markdown that points at the PNGs beside it, and HTML with each PNG
inlined, so the HTML file alone carries the whole report.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from artifact.core.io import atomic_write_text
from artifact.core.tables import markdown_table
from artifact.report.figures import Figure


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


Block = Heading | Para | Bullets | Table | Figure


@dataclass
class Report:
    title: str
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Heading(level, text))

    def para(self, text: str) -> None:
        self.blocks.append(Para(text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(Bullets(items))

    def table(self, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        self.blocks.append(Table(list(header), [[str(c) for c in row] for row in rows]))

    def pipe_table(self, text: str) -> None:
        """A table already in Markdown (pipe) syntax."""
        header, *rest = [line for line in text.strip().splitlines() if line.strip()]
        self.blocks.append(Table(_split_row(header), [_split_row(line) for line in rest[1:]]))

    def figure(self, fig: Figure) -> None:
        self.blocks.append(fig)

    # --- rendering ----------------------------------------------------------------------------

    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            if isinstance(block, Heading):
                out += ["#" * block.level + " " + block.text, ""]
            elif isinstance(block, Para):
                out += [block.text, ""]
            elif isinstance(block, Bullets):
                out += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):
                out += [markdown_table(block.rows, block.header).rstrip("\n"), ""]
            else:
                rel = (
                    block.path.relative_to(base) if block.path.is_relative_to(base) else block.path
                )
                out += [
                    f"![Fig. {block.number}: {block.title}]({rel.as_posix()})",
                    "",
                    f"*Fig. {block.number}: {block.title}.* {block.caption}",
                    "",
                ]
        return "\n".join(out).rstrip() + "\n"

    def html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            if isinstance(block, Heading):
                slug = re.sub(r"[^a-z0-9]+", "-", block.text.lower()).strip("-")
                level = block.level
                body.append(f'<h{level} id="{slug}">{_inline(block.text)}</h{level}>')
            elif isinstance(block, Para):
                body.append(f"<p>{_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                items = "".join(f"<li>{_inline(i)}</li>" for i in block.items)
                body.append(f"<ul>{items}</ul>")
            elif isinstance(block, Table):
                head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                    for row in block.rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            else:
                n = block.number
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                body.append(
                    f'<figure id="fig-{n}"><img alt="Fig. {n}" src="data:image/png;base64,{data}"/>'
                    f"<figcaption><b>Fig. {n}: {html.escape(block.title)}.</b> "
                    f"{_inline(block.caption)}</figcaption></figure>"
                )
        return HTML_TEMPLATE.format(title=html.escape(self.title), body="\n".join(body))

    def write(self, md_path: Path, html_path: Path) -> tuple[Path, Path]:
        atomic_write_text(md_path, self.markdown(md_path.parent))
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
