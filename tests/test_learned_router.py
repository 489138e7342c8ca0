"""The learned router: subject-agnostic features, the routing metrics worked out by hand, the
threshold's calibration, the model file, training examples from the request record, the
``turnout router`` command, and the router choosing models over HTTP with its decision recorded."""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from turnout.kernel import errors
from turnout.kernel.config import parse
from turnout.kernel.kernel import Kernel
from turnout.plugins.learned import cli, data, features, metrics, records, store, text
from turnout.plugins.learned import model as m
from turnout.plugins.learned.train import fit_prompts, fit_vectors
from turnout.plugins.sqlite_recorder import SCHEMA

from .fakes import Script, openai_app, serve
from .gateway import running_gateway

KEY = "sk-fake-upstream"

HARD = """Statement 1 | For any two groups G and H, the order of G x H divides the product of the \
orders of G and H whenever both are finite and every element of G commutes with every element of \
H. Statement 2 | If a polynomial of degree 4 over the field of 7 elements has no root, then it \
is irreducible over that field.
A. True, True
B. False, False
C. True, False
D. False, True
Answer:"""
EASY = "Who wrote the novel Pride and Prejudice, published in London by Thomas Egerton?"


# --- features ----------------------------------------------------------------------------------

def test_options_are_split_from_the_stem() -> None:
    stem, options = features.split_options("Which is largest?\nA. 3\nB. 7\nC. 5\nD. 1\nAnswer:")
    assert stem == "Which is largest?" and options == ["3", "7", "5", "1"]
    assert features.split_options("Just chat with me.") == ("Just chat with me.", [])


def test_renaming_the_subject_nouns_leaves_the_features_alone() -> None:
    """The same question about another subject (nouns of the same lengths) has the same
    features: nothing in them says what a prompt is about."""
    template = ("Which of the following {a} is NOT found in the {b}, according to the 1998 "
                "survey?\nA. the {c}\nB. the {d} only\nC. 42 {a}\nD. none of the above\nAnswer:")
    biology = template.format(a="enzymes", b="liver", c="kidney", d="spleen")
    law = template.format(a="tariffs", b="court", c="treaty", d="senate")
    assert [features.split_options(t)[1][3] for t in (biology, law)] == ["none of the above"] * 2
    one, other = features.features(biology, 0.5), features.features(law, 0.5)
    differing = {name for name, a, b in zip(features.NAMES, one, other) if a != b}
    # the words have the same lengths; only how the tokenizer splits them may differ
    assert differing <= {"log_tokens", "log_stem_tokens", "log_option_tokens"}
    named = dict(zip(features.NAMES, one))
    assert named["negation"] > 0 and named["which_following"] == 1 and named["all_none_above"] == 1
    assert named["options"] == 4 and named["years"] > 0
    model = store.load()
    assert abs(model.feature_score(one) - model.feature_score(other)) < 0.02


def test_every_feature_is_finite_for_odd_prompts() -> None:
    for prompt in ("", " ", "A. only an option", "```\ndef f():\n    return 1\n```", "$" * 5000,
                   "日本語の質問です。", "x = 3 + 4 * 2 ^ 2; how many?"):
        values = features.features(prompt)
        assert len(values) == len(features.NAMES) and all(np.isfinite(values))


# --- metrics, by hand --------------------------------------------------------------------------

# weak right on prompt 0 only, strong right on 0, 1, 2: r_weak 0.25, r_strong 0.75, gap 0.5.
WEAK, STRONG = [True, False, False, False], [True, True, True, False]


def test_oracle_metrics_by_hand() -> None:
    # prompts 1 and 2 first (gain 1 each): accuracy 0.25, 0.5, 0.75, 0.75, 0.75 at k = 0..4;
    # PGR 0, 0.5, 1, 1, 1; trapezoids of width 0.25: 0.0625 + 0.1875 + 0.25 + 0.25 = 0.75
    found = metrics.evaluate(metrics.oracle_scores(WEAK, STRONG), WEAK, STRONG)
    assert found == {"n": 4, "apgr": 0.75, "cpt50": 0.25, "cpt80": 0.5, "strong_share_at_95": 0.5}


def test_random_is_the_expectation_over_orders() -> None:
    # all tied: accuracy climbs linearly 0.25 -> 0.75, PGR(c) = c; 95% of 0.75 is 0.7125, first
    # reached at k = 4
    found = metrics.evaluate([0.0] * 4, WEAK, STRONG)
    assert found == {"n": 4, "apgr": 0.5, "cpt50": 0.5, "cpt80": 1.0, "strong_share_at_95": 1.0}


def test_the_reversed_oracle_scores_the_mirror_image() -> None:
    reverse = [-s for s in metrics.oracle_scores(WEAK, STRONG)]
    # prompts 0 and 3 first (gain 0): PGR 0, 0, 0, 0.5, 1: area 0.25
    assert metrics.evaluate(reverse, WEAK, STRONG)["apgr"] == 0.25


def test_no_gap_between_the_models_is_refused() -> None:
    with pytest.raises(ValueError, match="not more accurate"):
        metrics.evaluate([0.1, 0.2], [True, False], [False, True])


# --- training, calibration and the model file --------------------------------------------------

def synthetic(n: int = 400, seed: int = 7):
    """Vectors (features, then a word score) where a large first feature means the weak model
    fails."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(m.VECTOR_NAMES)))
    weak = list(rng.random(n) > 1 / (1 + np.exp(-2 * x[:, 0])))
    strong = list(rng.random(n) < 0.9)
    return x, weak, strong


def test_the_threshold_gives_the_target_share_on_the_training_data() -> None:
    x, weak, strong = synthetic()
    for share in (0.1, 0.3, 0.45, 0.8):
        model = fit_vectors(x, weak, strong, target_strong_share=share)
        sent = float(np.mean(model.predict_matrix(x) >= model.threshold))
        assert sent == pytest.approx(share, abs=0.005)
        assert model.threshold_for_share(share) == pytest.approx(model.threshold, abs=0.02)
    assert model.weak.weights[0] < 0 and abs(model.weak.weights[0]) == max(map(abs, model.weak.weights))


def test_the_threshold_reaches_the_target_quality_on_the_training_data() -> None:
    x, weak, strong = synthetic()
    model = fit_vectors(x, weak, strong, target_quality=0.95)
    to_strong = model.predict_matrix(x) >= model.threshold
    accuracy = np.mean(np.where(to_strong, strong, weak))
    assert accuracy >= 0.95 * np.mean(strong)
    assert model.calibration["target_quality"] == 0.95 and 0 < to_strong.mean() < 1


def test_the_model_file_round_trips(tmp_path: Path) -> None:
    x, weak, strong = synthetic()
    model = fit_vectors(x, weak, strong, target_strong_share=0.3)
    path = tmp_path / "router.json"
    model.save(path)
    again = m.Model.load(path)
    assert np.allclose(again.predict_matrix(x), model.predict_matrix(x))
    assert again.threshold == model.threshold and again.quantiles == model.quantiles
    assert again.predict(HARD) == pytest.approx(model.predict(HARD))


# --- the word model, and the two views together -----------------------------------------------

def test_a_prompts_terms_are_its_words_and_word_pairs() -> None:
    assert text.terms("Which of the following, which? A x") == {
        "which": 2, "of": 1, "the": 1, "following": 1, "which of": 1, "of the": 1,
        "the following": 1, "following which": 1}


def test_the_word_models_newton_steps_reach_the_dense_solution() -> None:
    """The sparse Newton / conjugate-gradient fit lands where the dense Newton fit of the feature
    models does, on the same unit-length rows and penalty."""
    rng = np.random.default_rng(5)
    counted = [Counter({f"w{j}": int(rng.integers(1, 4)) for j in rng.choice(12, 5, replace=False)})
               for _ in range(200)]
    idf = text.vocabulary(counted, min_df=1)
    sparse = text.Sparse(counted, idf)
    dense = np.zeros(sparse.shape)
    np.add.at(dense, (sparse.rows, sparse.cols), sparse.vals)
    y = (dense[:, 0] + rng.normal(0, 0.3, 200) > 0.2).astype(float)
    w, b = text.logistic(sparse, y, l2=1.0)
    exact = m.fit(dense, y, l2=1.0)
    assert np.allclose(w, exact.weights, atol=1e-6) and b == pytest.approx(exact.bias, abs=1e-6)


def word_rows(n: int = 120) -> list[tuple[str, bool, bool]]:
    """Same-shaped questions: about integrals the weak model fails, about capitals it does not."""
    out = []
    for i in range(n):
        if i % 2:
            out.append((f"Evaluate the definite integral of the function number {i} over the "
                        f"interval.\nA. {i}\nB. {i + 1}\nC. {i + 2}\nD. {i + 3}\nAnswer:", i % 6 == 1, True))
        else:
            out.append((f"Name the capital city of the country number {i} on the map."
                        f"\nA. {i}\nB. {i + 1}\nC. {i + 2}\nD. {i + 3}\nAnswer:", True, i % 8 != 0))
    return out


@pytest.fixture(scope="module")
def worded() -> m.Model:
    rows = word_rows()
    return fit_prompts([r[0] for r in rows], None, [r[1] for r in rows], [r[2] for r in rows],
                       groups=[f"g{i % 7}" for i in range(len(rows))], target_strong_share=0.5)


def test_a_model_trained_on_a_tiny_fixture_ranks_by_its_words(worded: m.Model) -> None:
    """Prompts of the same shape, told apart by their words: the word model ranks the integral
    above its bias and the capital below, and the combined score follows."""
    options = "\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
    hard = "Evaluate the definite integral of the function number 7 over the interval." + options
    easy = "Name the capital city of the country number 7 on the map." + options
    assert worded.text.score(hard) > worded.text.bias > worded.text.score(easy)
    assert worded.predict(hard) >= worded.threshold > worded.predict(easy)
    assert 0 <= worded.predict(easy) < worded.predict(hard) <= 1
    assert worded.text_quantiles == sorted(worded.text_quantiles) and len(worded.text_quantiles) == 101
    assert worded.trained_on["terms"] == len(worded.text.terms) > 0


def test_a_model_with_words_round_trips_through_its_file(worded: m.Model, tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    worded.save(path)
    again = m.Model.load(path)
    assert again.to_dict() == worded.to_dict()
    for prompt, _, _ in word_rows(12):
        assert again.predict(prompt) == worded.predict(prompt)
    x = worded.vectors([r[0] for r in word_rows(12)])
    assert np.allclose(again.predict_matrix(x), [worded.predict_vector(v) for v in x.tolist()])


def test_the_recorded_vector_replays_to_exactly_the_live_score() -> None:
    """What the router records (the rounded vector, word score last) is what it scored: the
    vector alone, through JSON, gives the same score, and one of another length is refused."""
    from turnout.kernel.request import ChatRequest
    from turnout.kernel.types import Context, ModelProfile
    from turnout.plugins.learned_router import VECTOR, learned

    models = [ModelProfile("weak", "p", "weak"), ModelProfile("strong", "p", "strong")]
    model = store.load()
    for prompt in (HARD, EASY):
        live = learned(Context(request=ChatRequest(model="r", messages=[
            {"role": "user", "content": prompt}])), models)
        recorded = json.loads(json.dumps(live.details))["vector"]
        assert len(recorded) == len(m.VECTOR_NAMES)
        assert recorded[-1] == round(model.text.score(prompt), 5)
        replay = Context(request=ChatRequest(model="r", messages=[{"role": "user", "content": "?"}]))
        replay.state[VECTOR] = recorded
        again = learned(replay, models)
        assert again.details == live.details and again.models == live.models
        assert model.predict_vector(recorded) == model.predict_vector(live.details["vector"])
    old = Context(request=ChatRequest(model="r", messages=[{"role": "user", "content": HARD}]))
    old.state[VECTOR] = [0.1] * 28
    assert learned(old, models) is None and VECTOR not in old.state
    with pytest.raises(ValueError, match="the features, then the word score"):
        model.predict_vector([0.1] * 28)


def test_a_model_file_for_other_features_or_no_model_is_refused(tmp_path: Path) -> None:
    data_ = json.loads(store.SHIPPED.read_text())
    data_["names"] = data_["names"][:-1] + ["something_else"]
    (tmp_path / "old.json").write_text(json.dumps(data_))
    with pytest.raises(ValueError, match="retrain it"):
        m.Model.load(tmp_path / "old.json")
    (tmp_path / "other.json").write_text('{"weights": []}')
    with pytest.raises(ValueError, match="turnout router train"):
        m.Model.load(tmp_path / "other.json")
    (tmp_path / "v1.json").write_text('{"format": "turnout-learned-router/1", "weights": []}')
    with pytest.raises(ValueError, match="this version reads"):
        m.Model.load(tmp_path / "v1.json")


def test_the_shipped_model_sends_a_hard_prompt_to_the_strong_model_and_an_easy_one_to_the_weak() -> None:
    model = store.load()
    assert model.trained_on["examples"] > 7000
    assert model.predict(HARD) >= model.threshold > model.predict(EASY)


def test_a_models_deployments_move_together() -> None:
    from dataclasses import replace

    from turnout.kernel.request import ChatRequest
    from turnout.kernel.types import Context, ModelProfile
    from turnout.plugins.learned_router import learned

    weak, strong = ModelProfile("weak", "p", "weak"), ModelProfile("strong", "p", "strong")
    deployed = [replace(weak, deployment="weak@a"), replace(weak, deployment="weak@b"),
                replace(strong, deployment="strong@a"), replace(strong, deployment="strong@b")]
    hard = learned(Context(request=ChatRequest(model="r", messages=[
        {"role": "user", "content": HARD}])), deployed)
    assert [m.deployment for m in hard.models] == ["strong@a", "strong@b", "weak@a", "weak@b"]
    easy = learned(Context(request=ChatRequest(model="r", messages=[
        {"role": "user", "content": EASY}])), deployed)
    assert [m.deployment for m in easy.models] == ["weak@a", "weak@b", "strong@a", "strong@b"]
    assert learned(Context(request=ChatRequest(model="r", messages=[
        {"role": "user", "content": HARD}])), deployed[2:]) is None  # one model: nothing to pick


# --- CSVs and the command ----------------------------------------------------------------------

def write_csv(path: Path, rows: list[tuple[str, bool, bool]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "weak/model", "strong/model"])
        writer.writerows(rows)


def outcome_rows(n: int = 60) -> list[tuple[str, bool, bool]]:
    """Long numeric questions fail on the weak model, short ones do not."""
    out = []
    for i in range(n):
        if i % 2:
            out.append((f"Compute the value of {i} * {i + 3} + {i * 7} / 3 - {i}^2, approximately, "
                        f"given {i} units.\nA. {i}\nB. {i * 2}\nC. {i * 3}\nD. {i * 4}\nAnswer:",
                        i % 3 == 0, True))
        else:
            out.append((f"Who is person number {i}?\nA. Ann\nB. Bob\nC. Cy\nD. Di\nAnswer:", True,
                        i % 4 != 0))
    return out


def command(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def test_train_then_eval_from_csvs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "csvs"
    folder.mkdir()
    write_csv(folder / "one.csv", outcome_rows()[:30])
    write_csv(folder / "two.csv", outcome_rows()[30:])
    assert len(data.read_dir(folder)) == 60
    out = tmp_path / "model.json"
    assert command("train", "--data", str(folder), "--out", str(out), "--target-strong-share",
                   "0.5") == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["examples"] == 60 and trained["strong_share_on_training"] == pytest.approx(0.5)
    assert command("eval", "--data", str(folder), "--model", str(out)) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["router"] == "learned" and scored["n"] == 60 and scored["apgr"] > 0.5


def test_a_csv_in_another_format_is_refused_with_what_to_write(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.csv").write_text("question,answer\nx,y\n")
    assert command("eval", "--data", str(tmp_path)) == 2
    assert "the first row must be 'prompt'" in capsys.readouterr().err


# --- retraining from the request record --------------------------------------------------------

VECTOR = [0.1] * len(m.VECTOR_NAMES)
ROUTED = {"kind": "learned", "weak": "weak", "strong": "strong", "vector": VECTOR}


@pytest.mark.parametrize("answered, attempts, feedback, needed", [
    ("weak", [("weak", "ok")], [], False),                          # the weak answer passed
    ("weak", [("weak", "ok")], [-1.0], True),                       # ... and was judged bad
    ("strong", [("weak", "rejected"), ("strong", "ok")], [], True),  # a cascade escalated
    ("strong", [("weak", "rejected"), ("strong", "ok")], [-1.0], False),  # both wrong
    ("strong", [("strong", "ok")], [1.0], None),                    # the weak model never tried
])
def test_what_a_recorded_request_says_about_the_weak_model(answered, attempts, feedback,
                                                           needed) -> None:
    found = records.label(ROUTED, answered, "ok", attempts, feedback)
    assert (found[1] if found else None) == needed


def test_retrain_learns_from_the_record(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "record.db"
    rng = np.random.default_rng(3)
    with sqlite3.connect(db) as conn:
        conn.executescript(SCHEMA)
        for i in range(80):
            vector = list(rng.normal(size=len(m.VECTOR_NAMES)))
            hard = vector[0] > 0
            decision = {"router": {**ROUTED, "vector": vector}}
            model = "strong" if hard else "weak"
            conn.execute("INSERT INTO requests (request_id, created_at, model, status, decision) "
                         "VALUES (?, ?, ?, 'ok', ?)", (f"r{i}", 1.0 + i, model, json.dumps(decision)))
            conn.execute("INSERT INTO attempts (request_id, n, created_at, model, status) "
                         "VALUES (?, 0, ?, 'weak', ?)", (f"r{i}", 1.0, "rejected" if hard else "ok"))
            if hard:
                conn.execute("INSERT INTO attempts (request_id, n, created_at, model, status) "
                             "VALUES (?, 1, ?, 'strong', 'ok')", (f"r{i}", 1.0))
    x, weak, _ = records.examples(db)
    assert len(x) == 80 and sum(not w for w in weak) == sum(v[0] > 0 for v in x)
    out = tmp_path / "retrained.json"
    assert command("retrain", "--db", str(db), "--out", str(out), "--min-examples", "50") == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 80
    retrained = m.Model.load(out)
    assert retrained.weak.weights[0] == min(retrained.weak.weights)    # it found the signal
    assert retrained.text.terms == store.load().text.terms       # the word model is kept
    assert command("retrain", "--db", str(db), "--out", str(out), "--min-examples", "500") == 1
    assert "80 recorded examples" in capsys.readouterr().err


# --- the router in the gateway -----------------------------------------------------------------

def test_a_bad_model_path_fails_the_config_with_what_to_do(tmp_path: Path) -> None:
    config = {"providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                                   "api_key": KEY}},
              "models": {"weak": {"provider": "up"}, "strong": {"provider": "up"}},
              "routes": {"ask": {"models": ["weak", "strong"], "router": {
                  "kind": "learned", "model_path": str(tmp_path / "missing.json")}}}}
    with pytest.raises(errors.ConfigError, match="turnout router train"):
        Kernel(parse(config, source="t")).load_plugins()
    config["routes"]["ask"]["router"] = {"kind": "learned", "threshold": 0.2,
                                         "target_strong_share": 0.3}
    with pytest.raises(errors.ConfigError, match="not both"):
        Kernel(parse(config, source="t")).load_plugins()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    script = Script(answer=lambda model, prompt: f"answered by {model}")
    with serve(openai_app(script, api_key=KEY)) as url:
        config = {
            "providers": {"up": {"kind": "openai", "base_url": url + "/v1", "api_key": KEY}},
            "models": {"weak": {"provider": "up", "input_price": 0.6, "output_price": 0.6},
                       "strong": {"provider": "up", "input_price": 10.0, "output_price": 30.0}},
            "routes": {"ask": {"models": ["weak", "strong"], "router": {"kind": "learned"}},
                       "few": {"models": ["weak", "strong"],
                               "router": {"kind": "learned", "target_strong_share": 0.0}}},
        }
        with running_gateway(config, tmp_path_factory.mktemp("learned")) as gw:
            yield gw


def decision_of(gateway, request_id: str) -> dict:
    row = next(r for r in gateway.rows() if r["request_id"] == request_id)
    return json.loads(row["decision"])


@pytest.mark.parametrize("route, prompt, first", [("ask", HARD, "strong"), ("ask", EASY, "weak"),
                                                  ("few", HARD, "weak")])
def test_http_the_router_picks_the_model_and_records_its_prediction(gateway, route, prompt,
                                                                   first) -> None:
    raw = gateway.client(timeout=10).chat.completions.with_raw_response.create(
        model=route, messages=[{"role": "user", "content": prompt}])
    answer = raw.parse()
    assert answer.choices[0].message.content == f"answered by {first}"
    router = decision_of(gateway, raw.headers["x-request-id"])["router"]
    assert router["kind"] == "learned" and router["weak"] == "weak" and router["strong"] == "strong"
    assert (router["prediction"] >= router["threshold"]) == (first == "strong")
    assert router["scores"]["strong"] == router["prediction"]
    assert set(router["features"]) == {"log_tokens", "options", "digit_share", "compute_cues",
                                       "reasoning_cues", "difficulty", "option_stem_ratio",
                                       "options_one_word", "word_score"}
    assert len(router["vector"]) == len(m.VECTOR_NAMES)
    # the recorded vector alone replays to the recorded score
    assert round(store.load().predict_vector(router["vector"]), 4) == router["prediction"]
    assert router["reason"].endswith(f"{first} first")
