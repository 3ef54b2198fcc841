"""The methods page the code cites: docs/METHODS.md.

Docstrings and comments point to it in one form, ``docs/METHODS.md#<anchor>``, where ``<anchor>`` is
GitHub's anchor of one of its headings. These tests fail when a pointer dangles (a heading was
renamed or a citation mistyped), when code cites a file outside the repository (``methods.md §N``)
or the tracker (``issue N``) instead of the page, and when the page drops a source it must name.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "METHODS.md"
SOURCES = sorted((ROOT / "bnn_nested").rglob("*.py"))
#: Other text that may cite the page (checked when present).
OTHER_TEXT = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] + sorted(
    p
    for d in ("configs", "examples", "benchmarks")
    for p in (ROOT / d).rglob("*.*")
    if p.suffix in {".py", ".yaml", ".md"}
)

CITE = re.compile(r"METHODS\.md#([A-Za-z0-9_-]+)")
ISSUE = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)

#: Sections the page must keep (their anchors are what the code cites or will cite).
REQUIRED_SECTIONS = [
    "widths-and-groups",
    "width-structure",
    "nested-dropout",
    "sandwich-rule",
    "fixed-widths",
    "variational-ordering-units",
    "downhill-distribution",
    "ordering-kl",
    "gaussian-weights-and-the-weight-kl",
    "moped-initialisation",
    "norm-control",
    "weight-decay",
    "weight-rescaling-wrs",
    "fixnorm",
    "scale-shift-invariant-regularizer",
    "batch-norm-per-width",
    "bn-re-estimation",
    "metrics",
    "expected-calibration-error",
    "ood-detection",
    "temperature-scaling-per-width",
    "conformal-prediction-sets-per-width",
    "cost-flops-parameters-and-latency",
    "importance-ordering",
    "from-trained-weights",
    "conventions",
]

#: Papers the page must name: (first author, year) found together in one paragraph.
PAPERS = [
    ("Rippel", "2014"),  # nested dropout, ICML
    ("Yu", "2019"),  # slimmable / universally slimmable networks: sandwich rule, BN calibration
    ("Cui", "2021"),  # Bayesian Nested Neural Networks, CVPR
    ("Kingma", "2015"),  # variational dropout, local reparameterisation, NeurIPS
    ("Molchanov", "2017"),  # sparse variational dropout, ICML
    ("Krishnan", "2020"),  # MOPED, AAAI
    ("Maddison", "2017"),  # the Concrete distribution, ICLR
    ("Jang", "2017"),  # Gumbel-softmax, ICLR
    ("Liu", "2102.03497"),  # WRS
    ("Zhou", "2103.15345"),  # FixNorm
    ("Liu", "2008.02965"),  # weight-scale-shift-invariant regularizer
    ("Loshchilov", "2019"),  # decoupled weight decay, ICLR
    ("Guo", "2017"),  # calibration, ECE eq. 3, temperature scaling, ICML
    ("Hendrycks", "2017"),  # maximum softmax probability baseline, ICLR
    ("Fang", "2023"),  # DepGraph, CVPR
]


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lowercase, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(text: str) -> list[str]:
    in_code = False
    out = []
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            out.append(line.lstrip("#").strip())
    return out


def anchors() -> list[str]:
    return [github_anchor(h) for h in headings(METHODS.read_text(encoding="utf-8"))]


def test_github_anchor_rule():
    assert github_anchor("The objective: each width sampler's own negative ELBO") == (
        "the-objective-each-width-samplers-own-negative-elbo"
    )
    assert github_anchor("Weight rescaling (WRS)") == "weight-rescaling-wrs"
    assert github_anchor("Cost: FLOPs, parameters and latency") == (
        "cost-flops-parameters-and-latency"
    )


def test_sources_cite_no_outside_methods_file_and_no_issue_numbers():
    bad = []
    for path in SOURCES:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "methods.md" in line or ISSUE.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "cite docs/METHODS.md#<anchor> instead:\n" + "\n".join(bad)


def test_sources_point_to_the_page_in_one_form():
    """Every mention of METHODS.md in the package names a section anchor."""
    bad = []
    for path in SOURCES:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in re.finditer(r"METHODS\.md", line):
                if not line[m.end() :].startswith("#"):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "write docs/METHODS.md#<anchor>:\n" + "\n".join(bad)


def test_headings_are_unique():
    seen = anchors()
    dup = sorted({a for a in seen if seen.count(a) > 1})
    assert not dup, f"duplicate headings (GitHub would suffix -1): {dup}"


@pytest.mark.parametrize("section", REQUIRED_SECTIONS)
def test_required_section_present(section):
    assert section in anchors()


def test_every_cited_anchor_resolves():
    known = set(anchors())
    cited: dict[str, list[str]] = {}
    for path in SOURCES + [p for p in OTHER_TEXT if p.is_file()]:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for anchor in CITE.findall(line):
                cited.setdefault(anchor, []).append(f"{path.relative_to(ROOT)}:{n}")
    from_package = {
        a for a, where in cited.items() if any(w.startswith("bnn_nested") for w in where)
    }
    assert len(from_package) >= 10, "the package should cite the page by anchor"
    dangling = {a: where for a, where in cited.items() if a not in known}
    assert not dangling, f"anchors with no heading in docs/METHODS.md: {dangling}"


def test_links_inside_the_page_resolve():
    known = set(anchors())
    links = re.findall(r"\]\(#([^)]+)\)", METHODS.read_text(encoding="utf-8"))
    assert links, "the page's contents list links its sections"
    assert not sorted(set(links) - known)


def config_commands() -> list[tuple[str, str]]:
    """``bnn-nested ...`` command lines in the comments of configs/*.yaml (continuations joined)."""
    out = []
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        comments = [
            ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")
        ]
        text = "\n".join(comments).replace("\\\n", " ")
        out += [(path.name, ln) for ln in text.splitlines() if ln.startswith("bnn-nested ")]
    return out


def test_config_comments_show_commands_the_cli_accepts():
    from bnn_nested.cli.main import build_parser

    commands = config_commands()
    assert any(name == "cifar10_vgg11wide.yaml" for name, _ in commands)
    for name, line in commands:
        argv = shlex.split(line)[1:]
        args = build_parser().parse_args(argv)  # UsageError (one line) on a wrong syntax
        if getattr(args, "config", None):
            assert (ROOT / args.config).is_file(), f"{name}: {line}"


@pytest.mark.parametrize("author, year", PAPERS)
def test_page_names_each_source(author, year):
    paragraphs = re.split(r"\n\s*\n", METHODS.read_text(encoding="utf-8"))
    assert any(re.search(rf"\b{author}\b", p) and year in p for p in paragraphs), (
        f"docs/METHODS.md names no paper by {author} ({year})"
    )


def test_methods_page_keeps_issue_28_corrections():
    """docs/METHODS.md (issue 28, item 7): no stale "to be fixed" note, the older name of ``kept``
    is ``frozen``, the reference code's own weight-KL fit (constants k1-k4) is under "Differences
    from the reference code", and every "X et al." of the text is in the references (Blundell et
    al. was cited but not listed)."""
    text = METHODS.read_text(encoding="utf-8")
    body, refs = text.split("## References", 1)
    assert "to be fixed" not in text.lower()
    assert "older name `frozen`" in text and "older name `kept`" not in text
    differences = body.split("## Differences from the reference code", 1)[1].split("\n## ", 1)[0]
    assert all(k in differences for k in ("k1", "k2", "k3", "k4"))
    cited = set(re.findall(r"\b([A-Z][a-z]+(?:[ -][A-Z][a-z]+)?) et al\.", body))
    missing = sorted(n for n in cited if n.split()[-1] not in refs)
    assert not missing, f"cited in docs/METHODS.md but not in its references: {missing}"
