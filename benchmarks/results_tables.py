"""The docs' tables of the correctness studies, rendered from their committed results.

    python benchmarks/results_tables.py               # print both tables
    python benchmarks/results_tables.py --write-docs  # replace them in docs/correctness.md and docs/backends.md

Each table sits between ``<!-- table:NAME -->`` and ``<!-- end table:NAME -->`` in its page;
``tests/test_docs_tables.py`` checks that the pages hold what this script renders, so a number
in those tables is always the committed JSON's (docs/results/user-problems/results.json from
``benchmarks/user_problems.py``, docs/results/fuzz-outcomes/results.json from
``benchmarks/fuzz_outcomes.py``).
"""
from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER = REPO / "docs" / "results" / "user-problems" / "results.json"
FUZZ = REPO / "docs" / "results" / "fuzz-outcomes" / "results.json"


def _number(text) -> str:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return "-"
    return f"{value:.3g}"


def _first_message(messages) -> str:
    if isinstance(messages, str):
        try:
            messages = ast.literal_eval(messages)
        except (ValueError, SyntaxError):
            return messages[:140]
    if not messages:
        return ""
    m = messages[0]
    text = f"{m['type']}: {m['message']}"
    text = text.replace("hypergrad: the hypergradient may be wrong: ", "")
    text = text.split(" (on_failure=")[0]
    return (text[:157] + "...") if len(text) > 160 else text


def user_problems_table(path: Path = USER) -> str:
    data = json.loads(path.read_text())
    rows = ["| case | what the user wrote | verdict | error | tolerance | what the library said |",
            "| --- | --- | --- | --- | --- | --- |"]
    for c in data["cases"]:
        what = c["description"].replace("|", "\\|")
        said = _first_message(c.get("messages")).replace("|", "\\|")
        rows.append(f"| `{c['id']}` | {what} | {c['verdict']} | {_number(c.get('error'))} | "
                    f"{_number(c.get('tolerance'))} | {said} |")
    counts: dict[str, int] = {}
    for c in data["cases"]:
        counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    total = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return "\n".join(rows) + f"\n\n{len(data['cases'])} cases: {total}."


def fuzz_table(path: Path = FUZZ) -> str:
    data = json.loads(path.read_text())
    kinds = list(data["cells"])
    rows = ["| backend | " + " | ".join(kinds) + " |", "| --- |" + " --- |" * len(kinds)]
    for backend in data["backends"]:
        cells = [data["cells"][k].get(backend, "n/a") for k in kinds]
        rows.append(f"| `{backend}` | " + " | ".join(cells) + " |")
    silent = len(data.get("silent", []))
    return ("\n".join(rows) + f"\n\n{data['problems_per_kind']} problems per kind, seed {data['seed']}; "
            f"silent-wrong results: {silent}. Command: `{data['command']}`.")


TABLES = {"user-problems": (user_problems_table, REPO / "docs" / "correctness.md"),
          "fuzz-outcomes": (fuzz_table, REPO / "docs" / "backends.md")}


def replace_table(page: str, name: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- table:{name} -->).*?(<!-- end table:{name} -->)", re.S)
    if not pattern.search(page):
        raise ValueError(f"no <!-- table:{name} --> ... <!-- end table:{name} --> markers in the page")
    return pattern.sub(lambda m: m.group(1) + "\n" + table + "\n" + m.group(2), page)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help="replace the tables in their pages")
    args = parser.parse_args(argv)
    for name, (render, page) in TABLES.items():
        table = render()
        if args.write_docs:
            page.write_text(replace_table(page.read_text(), name, table))
            print(f"wrote {name} into {page.relative_to(REPO)}")
        else:
            print(f"## {name}\n\n{table}\n")


if __name__ == "__main__":
    main()
