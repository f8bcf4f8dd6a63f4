"""Importing REES46 and generic CSVs: rows of both lengths, bad rows counted with line numbers."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.recommender.dataset import read_catalogue, read_interactions, read_meta
from tasks.recommender.importers import ImportFailed, import_generic, import_rees46, parse_shares
from tasks.recommender.local_data import load_region

REES46 = """\
2018-12-01 11:40:29 UTC,1924719191579951782,1842195256808833386,1,1806829201890738522,jewelry.earring,0,561.51,1515915625207851155,,red,gold,diamond
2018-12-01 17:38:31 UTC,1924899396621697920,1806829193678291446,1,1806829201848795447,,,212.14,1515915625207851155,,yellow,gold,
2018-12-02 13:53:42 UTC,1925511016616034733,1842214461889315556,1,1806829201890738522,jewelry.pendant,1,54.66,1515915625207851155,f,white,silver,sapphire
2018-12-02 17:44:02 UTC,1925626951238681511,1835566849434059453,1,1806829201890738522,jewelry.pendant,0,88.90,1515915625207851155,f,red,gold,amethyst
2018-12-03 10:00:00 UTC,1925626951238681512,1842195256808833386,1,1806829201890738522,jewelry.earring,0,561.51,1515915625353230683,,red,gold,diamond
2018-12-04 10:00:00 UTC,1925626951238681513,1806829193678291446,1,1806829201848795447,212.14,1515915625353230683,f,yellow,,
not a date,1,2,1,3,jewelry.ring,0,10.0,1515915625353230683,f,red,gold,ruby
2018-12-05 10:00:00 UTC,1925626951238681514,1842214461889315556,1,1806829201890738522,jewelry.pendant,1,54.66
2018-12-06 10:00:00 UTC,1925626951238681515,,1,1806829201890738522,jewelry.ring,0,10.0,1515915625353230683,f,red,gold,ruby
2018-12-07 10:00:00 UTC,1925626951238681516,1835566849434059453,1,1806829201890738522,jewelry.pendant,0,abc,1515915625353230683,f,red,gold,amethyst
2018-12-08 10:00:00 UTC,1925626951238681517,1835566849434059453,1,1806829201890738522,jewelry.pendant,0,88.90,1515915625353230683,f,red,gold,amethyst
2018-12-08 10:00:00 UTC,1925626951238681517,1835566849434059453,1,1806829201890738522,jewelry.pendant,0,88.90,1515915625353230683,f,red,gold,amethyst
2019-01-26 05:51:21 UTC,1965130913738130034,1937825427510789079,1,,230.12,1550612949079425642,,,,
"""


def test_rees46_both_row_lengths_and_bad_rows(tmp_path):
    src = tmp_path / "jewelry.csv"
    src.write_text(REES46)
    out = tmp_path / "out"
    report = import_rees46(src, out, {"cn": 1.0, "us": 1.0})
    assert report.rows_read == 13
    assert report.bad_rows == 4
    assert [line for line, _ in report.bad_examples] == [7, 8, 9, 10]
    reasons = dict(report.bad_examples)
    assert "event_time" in reasons[7] and "fields" in reasons[8]
    assert "product_id" in reasons[9] and "price" in reasons[10]
    assert report.duplicates_merged == 1
    assert report.rows_imported == 13 - 4 - 1
    assert sum(report.regions.values()) == report.rows_imported
    meta = read_meta(out)
    catalogue = read_catalogue(out)
    assert meta.regions == ("cn", "us")
    assert len(catalogue) == 5
    by_source = {s: i for i, s in enumerate(catalogue.source_id)}
    earring = by_source["1842195256808833386"]
    assert catalogue.attributes["category"][earring] == "earring"
    assert catalogue.attributes["gem"][earring] == "diamond"
    # 11-field rows as published: no category_code, no brand; price 6th, user 7th
    plain = by_source["1806829193678291446"]
    assert catalogue.attributes["category"][plain] == "unknown"
    assert catalogue.attributes["metal"][plain] == "gold"  # from its first row (line 2)
    bare = by_source["1937825427510789079"]  # the published example: a real purchase, kept
    assert catalogue.price[bare] == pytest.approx(230.12)
    users = set()
    for r in meta.regions:
        users |= set(read_interactions(out, r).user_id.tolist())
    assert len(users) == 3  # the two 13-field users' and the example's
    total = sum(len(read_interactions(out, r)) for r in meta.regions)
    assert total == report.rows_imported
    # each user is wholly in one region (a stable hash), and the region loads and splits
    for r in meta.regions:
        load_region(out, r)


def test_rees46_hash_rule_is_stable(tmp_path):
    src = tmp_path / "jewelry.csv"
    src.write_text(REES46)
    a = import_rees46(src, tmp_path / "a", parse_shares("cn=30,us=24.5,eu=20"))
    b = import_rees46(src, tmp_path / "b", parse_shares("cn=30,us=24.5,eu=20"))
    assert a.regions == b.regions
    with pytest.raises(ImportFailed, match="share"):
        parse_shares("cn=abc")


def test_generic_csv_with_bad_rows_and_items(tmp_path):
    src = tmp_path / "events.csv"
    src.write_text(
        "user_id,item_id,timestamp,region\n"
        "u1,ring-1,1700000000,eu\n"
        "u1,ring-2,2023-11-15T10:00:00Z,eu\n"
        "u1,ring-3,1700100000,eu\n"
        "u2,ring-1,1700000500,jp\n"
        "u2,ring-2,yesterday,jp\n"
        ",ring-2,1700000600,jp\n"
        "u2,ring-3,1700000700,Japan!\n"
        "u2,ring-3,1700000800\n"
        "u2,ring-3,1700000900,jp\n"
        "u1,ring-1,1700200000,jp\n"
    )
    items = tmp_path / "items.csv"
    items.write_text("item_id,category,metal,price\nring-1,ring,silver,20\nring-2,ring,gold,x\n")
    out = tmp_path / "out"
    report = import_generic(src, out, items)
    assert report.bad_rows == 5
    assert [line for line, _ in report.bad_examples] == [6, 7, 8, 9, 3]
    assert report.rows_imported == 6
    assert report.users_moved == 1  # u1 has a jp event but started in eu: kept whole in eu
    assert report.regions == {"eu": 4, "jp": 2}
    catalogue = read_catalogue(out)
    by_source = {s: i for i, s in enumerate(catalogue.source_id)}
    assert catalogue.attributes["metal"][by_source["ring-1"]] == "silver"
    assert catalogue.price[by_source["ring-1"]] == pytest.approx(20.0)
    assert catalogue.attributes["metal"][by_source["ring-3"]] == "unknown"
    eu = read_interactions(out, "eu")
    assert len(eu) == 4 and len(np.unique(eu.user_id)) == 1


def test_generic_without_header_is_a_clear_error(tmp_path):
    src = tmp_path / "events.csv"
    src.write_text("u1,i1,1,eu\n")
    with pytest.raises(ImportFailed, match="header"):
        import_generic(src, tmp_path / "out")
