"""The built-in loop on real data pipelines: a map-style Dataset with dict inputs, a batch
function, an on-device transform, a workload's own metrics, per-item (token) losses with a
mask, and a driver that keeps only what it needs of a workload."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from search_spaces import derive
from services import metrics as m
from services.errors import SpecError
from services.spec import WorkloadSpec, parse_spec
from services.training import workloads
from services.training.data import Batches
from services.training.optim import make_optimizer
from services.training.train import Budget, run_trial, train_step
from services.training.workloads import Workload, check, digits_mlp
from tests.conftest import spec_dict

HP = derive(batch_size=32, reduction="mean", optimizer="momentum", lr_per_sample=1e-3, seed=2)


@pytest.fixture(scope="module")
def tensors():
    return digits_mlp(hidden=16)


class PixelsDataset(Dataset):
    """Items ``({"pixels": x}, y)``, read one by one, counting every read."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        return {"pixels": self.x[i]}, self.y[i]


class PixelsModel(nn.Module):
    """The digits MLP, called with keyword inputs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, pixels):
        return self.inner(pixels)


def _losses(workload, hp=HP, samples=None, **budget):
    reports = []
    samples = samples or 2 * workload.n_train
    run_trial(workload, hp, Budget(samples, workload.n_train, **budget), lambda r, s: reports.append(r))
    return reports


def test_a_dataset_with_dict_inputs_trains_exactly_as_the_same_tensors(tensors):
    """Same samples, same seeded order: a Dataset of dict items is the tensors, read lazily."""
    train = PixelsDataset(tensors.x_train, tensors.y_train)
    as_dataset = Workload(
        lambda: PixelsModel(tensors.model_fn()),
        loss_fn=tensors.loss_fn,
        train_set=train,
        val_set=PixelsDataset(tensors.x_val, tensors.y_val),
    )
    check(as_dataset)
    ours, reference = _losses(as_dataset), _losses(tensors)
    for a, b in zip(ours, reference):
        for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.VAL_ACCURACY, m.SAMPLES_SEEN):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    # only what was trained on was read: 2 epochs without each pass's tail, nothing gathered whole
    trained = ours[-1][m.SAMPLES_SEEN]
    assert trained <= train.reads <= trained + 2  # (+2: check() reads two samples)


def test_a_batch_function_trains_exactly_as_the_same_tensors(tensors):
    calls = []

    def batches(x, y):
        def fn(idx):
            calls.append(len(idx))
            assert idx.dtype == torch.long and idx.device.type == "cpu"
            return x[idx], y[idx]

        return Batches(len(y), fn)

    as_function = Workload(
        tensors.model_fn,
        loss_fn=tensors.loss_fn,
        train_set=batches(tensors.x_train, tensors.y_train),
        val_set=batches(tensors.x_val, tensors.y_val),
    )
    ours, reference = _losses(as_function), _losses(tensors)
    assert [r[m.VAL_LOSS] for r in ours] == pytest.approx([r[m.VAL_LOSS] for r in reference], rel=1e-6)
    assert max(calls) <= 8192 and HP.batch_size in calls


def test_the_transform_sees_training_batches_on_the_device_and_never_validation(tensors):
    seen = []

    def drop_everything(x, y):
        seen.append((x.shape[0], x.device.type))
        return torch.zeros_like(x), y  # nothing to learn from: the val loss cannot fall far

    blind = Workload(**{**tensors.__dict__, "transform": drop_everything})
    reports = _losses(blind)
    assert seen and all(n == HP.batch_size and device == "cpu" for n, device in seen)
    assert len(seen) == reports[-1][m.UPDATES]  # once per training batch, never on validation
    assert reports[-1][m.VAL_LOSS] > 0.8 * reports[0][m.INITIAL_VAL_LOSS]
    assert _losses(tensors)[-1][m.VAL_LOSS] < 0.5 * reports[0][m.INITIAL_VAL_LOSS]  # the check can fail


def test_a_workload_reports_its_own_metrics_by_name(tensors):
    def top2(outputs, targets):
        return {"top2": (outputs.topk(2, dim=1).indices == targets[:, None]).any(dim=1).float()}

    reports = _losses(Workload(**{**tensors.__dict__, "metrics": top2}))
    assert m.VAL_ACCURACY not in reports[-1]  # the workload's metrics replace the argmax accuracy
    top = reports[-1]["val/top2"]
    accuracy = _losses(tensors)[-1][m.VAL_ACCURACY]
    assert accuracy <= top <= 1.0 and top > 0.5
    assert m.is_reported("val/top2") and not m.is_reported("config/lr") and not m.is_reported("val/a b")


# -- per-item losses ---------------------------------------------------------------------------

PAD = -1
VOCAB, T = 7, 6


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.out = nn.Linear(8, VOCAB)

    def forward(self, x):
        return self.out(torch.tanh(self.emb(x)))


def token_losses(logits, targets):
    return nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")


def not_padding(targets):
    return targets != PAD


def _padded_tokens(n, seed=0):
    """Sequences of 1..T real tokens, padded to T: the token counts vary from sample to sample."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (n, T), generator=g)
    y = torch.randint(0, VOCAB, (n, T), generator=g)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    y[torch.arange(T)[None, :] >= lengths[:, None]] = PAD
    return x, y


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_with_variable_token_counts_accumulated_micro_batches_give_the_whole_batch_update(optimizer, reduction):
    torch.manual_seed(0)
    x, y = _padded_tokens(64)
    hp = derive(batch_size=64, reduction=reduction, optimizer=optimizer, lr_per_sample=1e-3)
    whole, parts = TinyLM().double(), TinyLM().double()
    parts.load_state_dict(whole.state_dict())
    a = train_step(whole, make_optimizer(whole, hp), x, y, token_losses, hp, items=not_padding)
    b = train_step(parts, make_optimizer(parts, hp), x, y, token_losses, hp, micro_batch=16, items=not_padding)
    assert b.item() == pytest.approx(a.item(), rel=1e-12)
    for p, q in zip(whole.parameters(), parts.parameters()):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-13)
    if reduction == "mean":  # the check can fail: averaging the micro-batches' own token means differs
        model = TinyLM().double()
        right = _grads(model, [token_losses(model(x), y)[not_padding(y)].mean()])
        micro = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
        wrong = _grads(model, [token_losses(model(xs), ys)[not_padding(ys)].mean() / 4 for xs, ys in micro])
        assert not torch.allclose(right, wrong, rtol=1e-3)


def _grads(model, losses):
    model.zero_grad()
    for loss in losses:
        loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_per_item_losses_are_reported_per_item():
    x, y = _padded_tokens(256)
    lm = Workload(TinyLM, x, y, x[:64], y[:64], token_losses, classification=False, items=not_padding)
    check(lm)
    assert lm.loss_unit == "item"
    hp = derive(batch_size=32, reduction="mean", optimizer="adamw", lr_per_sample=1e-12)  # lr ~ 0: no change
    reports = []
    run_trial(lm, hp, Budget(64, 64), lambda r, s: reports.append(r))
    torch.manual_seed(hp.seed)
    with torch.no_grad():
        losses = token_losses(TinyLM()(x[:64]), y[:64])
    per_token = losses[not_padding(y[:64])].mean().item()
    per_sample = losses.sum(dim=1).mean().item()
    assert reports[-1][m.VAL_LOSS] == pytest.approx(per_token, rel=1e-5)
    assert not math.isclose(per_token, per_sample, rel_tol=0.1)


def test_a_mask_of_the_wrong_shape_is_refused_naming_items():
    x, y = _padded_tokens(8)
    bad = Workload(TinyLM, x, y, x, y, token_losses, classification=False, items=lambda t: t[:, 0] != PAD)
    with pytest.raises(SpecError, match=r"^workload\.items: the mask must have the shape"):
        check(bad)
    with pytest.raises(SpecError, match=r"^workload\.loss_fn: must return one loss per sample.*Workload\.items"):
        check(Workload(TinyLM, x, y, x, y, token_losses, classification=False))


# -- what the driver keeps -------------------------------------------------------------------------


def test_the_driver_keeps_the_facts_of_a_workload_not_its_data():
    workloads._load_cached.cache_clear()
    facts = workloads.survey(WorkloadSpec(name="digits_mlp", params={"hidden": 8}))
    assert facts[:2] == (1078, "sample") and facts.pack_refusal is None
    assert facts.n_params == (64 * 8 + 8) + (8 * 10 + 10)  # the digits MLP 64-8-10
    assert workloads._load_cached.cache_info().currsize == 0  # built, checked, counted, dropped
    assert workloads.survey(WorkloadSpec(name="charlm_gpt", params={"corpus_chars": 20_000})).loss_unit == "item"


def test_loss_unit_is_for_a_users_loop_only():
    spec = spec_dict(workload={"train": "docs.examples.dataloader_loop:train", "loss_unit": "item"})
    spec["budget"] = {"samples": 1000}
    assert parse_spec(spec).workload.loss_unit == "item"
    with pytest.raises(SpecError, match="loss_unit"):
        parse_spec(spec_dict(workload={"name": "digits_mlp", "loss_unit": "item"}))
