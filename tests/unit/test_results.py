"""minipeft.book.results: the per-chapter records and the README table generated from them."""

import json

import pytest

from minipeft.book.results import chapter_table, load_all, record

METRICS = {"loss before": (3.5, "nats"), "loss after": (0.2, "nats"), "trainable": (1234, "params"),
           "accuracy": (91.25, "%")}


def write(tmp_path, **kwargs):
    return record("99_test", "A test chapter", METRICS, scale="ci", seed=0, wall_time_s=12.34,
                  directory=tmp_path, **kwargs)


def test_record_writes_every_metric_with_its_unit_and_the_run_facts(tmp_path):
    saved = json.loads(write(tmp_path).read_text())
    assert {name: (m["value"], m["unit"]) for name, m in saved["metrics"].items()} == METRICS
    assert saved["scale"] == "ci" and saved["seed"] == 0 and saved["wall_time_s"] == 12.3
    assert saved["headline"] == ["loss before", "loss after", "trainable"]  # default: the first three


def test_every_record_has_its_own_run_id_and_prints_it(tmp_path, capsys):
    first = json.loads(write(tmp_path).read_text())["run_id"]
    second = json.loads(write(tmp_path).read_text())["run_id"]
    assert len(first) == 12 and int(first, 16) >= 0 and first != second
    assert capsys.readouterr().out.splitlines() == [f"results recorded: run {first}",
                                                     f"results recorded: run {second}"]


def test_the_table_shows_the_chosen_headline_in_its_order(tmp_path):
    write(tmp_path, headline=["accuracy", "loss after"])
    row = chapter_table(load_all(tmp_path)).splitlines()[-1]
    assert "accuracy 91.2%; loss after 0.2 nats |" in row
    assert "loss before" not in row and "`ci`" in row and "| 12 s |" in row


def test_an_unknown_headline_name_raises_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="not among the recorded metrics"):
        write(tmp_path, headline=["acuracy"])
    assert not list(tmp_path.iterdir())


def test_the_reproductions_page_lists_each_claim_with_its_source_and_status(tmp_path):
    from minipeft.book.results import reproductions_page

    write(tmp_path, paper_claims=[{"claim": "rank 4 is enough | mostly", "source": "Hu et al. 2021, Table 6",
                                   "status": "reproduced in direction"},
                                  {"claim": "merging adds no latency", "source": "Hu et al. 2021, section 4.2"}])
    page = reproductions_page(load_all(tmp_path))
    assert "## 99_test — A test chapter" in page and "{doc}`../notebooks/99_test`" in page
    assert "| rank 4 is enough \\| mostly | Hu et al. 2021, Table 6 | reproduced in direction |" in page
    assert "| merging adds no latency | Hu et al. 2021, section 4.2 | see the chapter |" in page
    assert "Measured: loss before 3.5 nats" in page


def test_the_table_prefers_the_chapter_cpu_time_to_its_wall_time(tmp_path):
    # Wall time grows when other work shares the machine; the chapter's one-thread CPU time does not.
    record("98_cpu", "Timed", {**METRICS, "chapter CPU time": (71.6, "s")}, scale="ci", seed=0, wall_time_s=300.0,
           directory=tmp_path)
    row = chapter_table(load_all(tmp_path)).splitlines()[-1]
    assert row.endswith("| 72 s |")
