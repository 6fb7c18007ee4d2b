"""RichERE ED / EAE scorers: ADELIE's item rules by hand (no RichERE sample file is public: LDC)."""
from ie_engine.data.scoring import event, score_records


def counts(m, suffix=""):
    return m["tp" + suffix], m["n_pred" + suffix], m["n_gold" + suffix]


def test_ed_whitespace_case_and_type(record):
    m = event.score_ed([record("bomb: attack; New York: transportperson",
                               "[Answer]: bomb : attack; NewYork:transportperson; Attack: Attack; fire",
                               "richere-ed")])
    assert counts(m) == (2, 2, 2)  # "Attack" is no ED type (case-sensitive); "fire" has no ":"
    assert len(event.ED_TYPES) == 38 and len(event.EAE_ROLES) == 26


def test_ed_na_substring_and_unchecked_gold(record):
    m = event.score_ed([record("NATO: attack", "NATO: attack", "richere-ed"),
                        record("NA", "", "richere-ed"),
                        record("a: attack", "a:attack:x", "richere-ed")])
    # ADELIE: "NATO:attack" dropped from the prediction (contains "NA"); gold "NA" counts as an
    # item; "a:attack:x" is kept whole and matches nothing
    assert counts(m) == (0, 1, 3)
    assert m["f1"] == 0.0
    # corrected: NATO kept on both sides, gold "NA" is no item
    assert counts(m, "_corrected") == (1, 2, 2)


def test_eae_lower_cases_and_na_never_fires(record):
    m = event.score_eae([record("John: Person; NATO: attacker",
                                "[Answer]: john: person; nato: ATTACKER; x: NA; y: bogus", "richere-eae")])
    assert counts(m) == (2, 2, 2) and counts(m, "_corrected") == (2, 2, 2)
    p = 2 / (2 + 1e-10)  # tp / (n_pred + 1e-10)
    assert m["f1"] == 2 * p * p / (2 * p + 1e-10) < 1.0 and m["f1_corrected"] == 1.0


def test_registry_routes_richere_names(record):
    assert score_records([record("a: attack", "a: attack", "RichERE-ed")])["task"] == "ed"
    assert score_records([record("a: victim", "a: victim", "richere-eae")])["task"] == "eae"
