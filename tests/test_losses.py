"""The methods' objectives on hand-made tensors: known values, zero where the order is already right, and one SGD
step moving free scores in the direction each method wants."""
import math

import pytest
import torch

from teachloop.methods import dpo, raft, rrhf, tuna
from teachloop.methods.common import best_index, length_normalised


def test_length_normalised():
    sums = torch.tensor([-6.0, -6.0])
    counts = torch.tensor([3, 2])
    assert length_normalised(sums, counts).tolist() == [-2.0, -3.0]
    assert length_normalised(sums, counts, 0.0).tolist() == [-6.0, -6.0]
    assert length_normalised(sums, counts, 0.5)[0].item() == pytest.approx(-6 / math.sqrt(3))


def test_tuna_ranking_known_value():
    # best..worst scores -1.0, -1.5, -1.2 with margin 0.1:
    # gap 1: max(0, .1 - .5) = 0 and max(0, .1 - (-.3)) = .4  -> mean .2
    # gap 2: max(0, .2 - .2) = 0                                -> mean 0
    scores = torch.tensor([[-1.0, -1.5, -1.2]])
    assert tuna.ranking_loss(scores, 0.1).item() == pytest.approx(0.2)


def test_tuna_ranking_zero_when_ordered_with_margin():
    scores = torch.tensor([[-1.0, -1.2, -1.4, -1.6], [0.0, -0.5, -1.0, -2.0]])
    assert tuna.ranking_loss(scores, 0.1).item() == 0.0
    # the same scores with too small a gap for margin 0.3 cost something
    assert tuna.ranking_loss(scores, 0.3).item() > 0


def test_tuna_ranking_matches_margin_ranking_loss_per_gap():
    torch.manual_seed(0)
    scores = torch.randn(3, 4)
    expected = sum(torch.nn.MarginRankingLoss(0.1 * i)(scores[:, :-i].reshape(-1), scores[:, i:].reshape(-1),
                                                       torch.ones(3 * (4 - i))) for i in range(1, 4))
    assert tuna.ranking_loss(scores, 0.1).item() == pytest.approx(expected.item())


def test_tuna_ranking_ignores_invalid_slots():
    scores = torch.tensor([[-1.0, -1.5, 99.0], [-1.0, -0.9, -3.0]])
    valid = torch.tensor([[True, True, False], [True, True, True]])
    # gap 1 pairs: (-1,-1.5)->0, (-1,-.9)->.2, (-.9,-3)->0 -> mean .2/3; gap 2: row 2 only (-1,-3)->0
    assert tuna.ranking_loss(scores, 0.1, valid).item() == pytest.approx(0.2 / 3)
    # one-candidate rows (an SFT example mixed in) have no pair at all
    assert tuna.ranking_loss(torch.tensor([[5.0, 0.0]]), 0.1, torch.tensor([[True, False]])).item() == 0


def test_tuna_loss_mle_all_and_best():
    sums = torch.tensor([[-2.0, -6.0]])
    counts = torch.tensor([[2, 3]])
    # scores -1 and -2: ordered with gap 1 > margin, rank loss 0
    loss, logs = tuna.loss(sums, counts, margin=0.1, mle_weight=1.0, mle_on="all")
    assert loss.item() == pytest.approx(8 / 5) and logs["rank"] == 0 and logs["ordered"] == 1.0
    loss, _ = tuna.loss(sums, counts, margin=0.1, mle_weight=0.5, mle_on="best")
    assert loss.item() == pytest.approx(0.5 * 1.0)
    with pytest.raises(ValueError):
        tuna.loss(sums, counts, mle_on="worst")


def test_rrhf_known_value():
    scores = torch.tensor([[-1.0, -2.0, -0.5]])
    rewards = torch.tensor([[3.0, 1.0, 2.0]])
    # pairs (a worse, b better): (1,0): relu(-2 - -1)=0; (1,2): relu(-2 - -.5)=0; (2,0): relu(-.5 - -1)=.5
    loss, logs = rrhf.loss(scores, rewards, torch.tensor(0.25), rrhf_weight=2.0)
    assert logs["rank"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(2 * 0.5 + 0.25)
    assert logs["misordered"] == pytest.approx(1 / 3)


def test_rrhf_ties_and_invalid_make_no_pair():
    scores = torch.tensor([[-3.0, -1.0, 0.0]])
    rewards = torch.tensor([[1.0, 1.0, 5.0]])
    valid = torch.tensor([[True, True, False]])
    loss, logs = rrhf.loss(scores, rewards, torch.tensor([0.0]), valid=valid)
    assert loss.item() == 0 and logs["rank"] == 0
    assert best_index(rewards, valid).tolist() == [0]


def test_dpo_value_at_equal_logprobs_is_log2():
    x = torch.tensor([-10.0, -3.0])
    y = torch.tensor([-12.0, -7.0])
    loss, logs = dpo.loss(x, y, x.clone(), y.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    assert logs["reward_margin"] == 0 and logs["reward_acc"] == 0


def test_dpo_known_value_and_accuracy():
    loss, logs = dpo.loss(torch.tensor([-1.0]), torch.tensor([-5.0]), torch.tensor([-2.0]),
                                 torch.tensor([-4.0]), beta=0.5)
    # margin = .5 * ((-1+2) - (-5+4)) = 1
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert logs["reward_acc"] == 1.0 and logs["reward_margin"] == pytest.approx(1.0)


def _one_step(loss_of, init):
    param = torch.nn.Parameter(torch.tensor(init))
    opt = torch.optim.SGD([param], lr=0.1)
    opt.zero_grad()
    loss_of(param).backward()
    before = param.detach().clone()
    opt.step()
    return before, param.detach()


def test_tuna_step_raises_better_candidate():
    before, after = _one_step(lambda s: tuna.ranking_loss(s, 0.1), [[-2.0, -1.0, -1.5]])
    assert (after[0, 0] - after[0, 1]) > (before[0, 0] - before[0, 1])


def test_rrhf_step_raises_better_candidate():
    rewards = torch.tensor([[0.0, 1.0]])
    before, after = _one_step(lambda s: rrhf.loss(s, rewards, torch.tensor(0.0))[0], [[-1.0, -2.0]])
    assert (after[0, 1] - after[0, 0]) > (before[0, 1] - before[0, 0])


def test_dpo_step_raises_chosen_over_rejected():
    ref = torch.tensor([-5.0, -5.0])

    def loss_of(p):
        return dpo.loss(p[:1], p[1:], ref[:1], ref[1:], beta=0.1)[0]

    before, after = _one_step(loss_of, [-5.0, -5.0])
    assert after[0] > before[0] and after[1] < before[1]


def test_raft_select_global_and_local():
    recs = [{"id": "a"}, {"id": "a"}, {"id": "a"}, {"id": "a"}, {"id": "b"}, {"id": "b"}, {"id": "b"}, {"id": "b"}]
    scores = [0.1, 0.9, 0.5, float("nan"), -1.0, -2.0, -0.5, None]
    # global: 6 usable samples, top ceil(.2 * 6) = 2 -> the .9 and .5 of prompt a
    assert raft.select(recs, scores, "global", 0.2) == [1, 2]
    # local: best of each prompt
    assert raft.select(recs, scores, "local", 0.2) == [1, 6]
    # local with alpha .67 keeps round(.67 * 3) = 2 per prompt
    assert raft.select(recs, scores, "local", 0.67) == [1, 2, 4, 6]
    with pytest.raises(ValueError):
        raft.select(recs, scores, "top", 0.2)


def test_raft_select_ties_prefer_earlier():
    recs = [{"id": "a"}] * 3
    assert raft.select(recs, [1.0, 1.0, 1.0], "local", 0.2) == [0]
