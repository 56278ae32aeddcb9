"""The one model-card writer: the ``README.md`` beside every model finmerge writes (θ_cpt, the demo models,
the merged model).

A card is Hugging Face front matter (``library_name``, ``tags``), a ``# title``, an optional key/value
table of facts, free Markdown, then ``## heading`` sections in order::

    model_card("θ_cpt", {"steps": 12}, "Weights in safetensors.",
               sections=[("Inputs", table([("base", "s3://m/base")], header=("role", "URI")))])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


def front_matter(tags: Sequence[str] = ("finmerge",)) -> str:
    return f"---\nlibrary_name: transformers\ntags: [{', '.join(tags)}]\n---\n"


def table(rows: Iterable[Sequence[object]], header: Sequence[str] = ("", "")) -> str:
    """A Markdown table; the default, empty header makes a two-column key/value table."""
    lines = [
        "|" + "|".join(f" {h} " if h else " " for h in header) + "|",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def model_card(
    title: str,
    facts: Mapping[str, object] | None = None,
    body: str = "",
    *,
    sections: Sequence[tuple[str, str]] = (),
    tags: Sequence[str] = ("finmerge",),
) -> str:
    """The card's text: front matter, ``# title``, ``facts`` as a key/value table, ``body``, then each
    ``(heading, markdown)`` of ``sections`` as a ``## heading`` section. Empty parts are left out."""
    parts = [f"# {title}"]
    if facts:
        parts.append(table(facts.items()))
    if body:
        parts.append(body)
    parts += [f"## {heading}\n\n{text}" for heading, text in sections]
    return front_matter(tags) + "\n\n".join(parts) + "\n"
