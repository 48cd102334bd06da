"""Every tensor a loss or scorer makes lives on its inputs' device, checked without a GPU.

`OtherDevice` tensors hold real CPU data but report the `meta` device, so the code under test sees a device that
is not the CPU's and sends what it makes there with `device=scores.device`. Inside `other_device()` every op runs
on the real data; an op that mixes such a tensor with a plain CPU one (other than a 0-dim scalar, which CUDA
accepts too) raises, as CUDA does ("Expected all tensors to be on the same device"). A tiny random LLaMA with its
parameters moved there is then trained by every method's loss for one step, and scores reference answers.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from teachloop.methods import citing, dpo, raft, rrhf, sft, tuna
from teachloop.reference import reference_loglik
from teachloop.student.model import LoraConfig, resolve_targets
from tiny_models import char_tokenizer, tiny_llama

OTHER = torch.device("meta")


class OtherDevice(torch.Tensor):
    """A CPU tensor that says it lives on OTHER."""

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(), dtype=elem.dtype,
                                                   device=OTHER, requires_grad=elem.requires_grad)

    def __init__(self, elem: torch.Tensor):
        self.elem = elem

    def __repr__(self):
        return f"OtherDevice({self.elem!r})"

    def tolist(self):  # not an op torch dispatches: copied to the host, as CUDA's does
        return self.elem.tolist()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _is_other(device) -> bool:
    return device is not None and torch.device(device) == OTHER


def _run(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    tensors = [t for t in flat if isinstance(t, torch.Tensor)]
    other = [t for t in tensors if isinstance(t, OtherDevice)]
    if any(t.device == OTHER and not isinstance(t, OtherDevice) for t in tensors):
        raise RuntimeError(f"{func}: a tensor made on {OTHER} outside the harness (it holds no data)")
    plain = [t for t in tensors if not isinstance(t, OtherDevice) and t.dim() > 0]
    if other and plain:
        raise RuntimeError(f"{func}: Expected all tensors to be on the same device, but found at least two "
                           f"devices, {OTHER} and cpu (a tensor of shape {list(plain[0].shape)} made on the CPU)")
    target = kwargs.get("device")
    to_other = bool(other) or _is_other(target)
    if func in (torch.ops.aten._to_copy.default, torch.ops.aten.to.device, torch.ops.aten.to.dtype_layout) \
            and target is not None:
        to_other = _is_other(target)  # .to("cpu") leaves the device, .to(OTHER) enters it
    if "device" in kwargs:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    unwrap = lambda t: t.elem if isinstance(t, OtherDevice) else t  # noqa: E731
    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
    if not to_other:
        return out
    return tree_map(lambda t: OtherDevice(t) if isinstance(t, torch.Tensor) and not isinstance(t, OtherDevice)
                    else t, out)


class _Factories(TorchDispatchMode):
    """Routes ops with no tensor argument (factories: zeros, arange, tensor...) through `_run`, so one made with
    `device=OTHER` holds real data and one made without a device stays a plain CPU tensor."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class _FromData(TorchFunctionMode):
    """`torch.tensor(data, device=OTHER)` builds its tensor below the dispatcher; build it on the CPU and move it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and _is_other(kwargs.get("device")):
            return OtherDevice(func(*args, **{**kwargs, "device": "cpu"}))
        return func(*args, **kwargs)


@contextlib.contextmanager
def other_device():
    with _FromData(), _Factories():
        yield


def move(model) -> None:
    """Every parameter and buffer of `model` onto OTHER (real data kept)."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            module._parameters[name] = torch.nn.Parameter(OtherDevice(p.data), requires_grad=p.requires_grad)
        for name, b in list(module.named_buffers(recurse=False)):
            module._buffers[name] = OtherDevice(b)


def test_the_harness_refuses_what_cuda_refuses():
    with other_device():
        a = OtherDevice(torch.ones(3))
        assert a.device == OTHER and (a + 1).device == OTHER  # a Python or 0-dim scalar mixes, as on CUDA
        assert torch.zeros(3, device=a.device).device == OTHER
        assert float((a * torch.tensor([1.0, 2.0, 3.0], device=a.device)).sum()) == 6.0
        assert float((a * torch.tensor(2.0)).sum()) == 6.0
        with pytest.raises(RuntimeError, match="same device"):
            a + torch.ones(3)  # noqa: B018 -- a CPU-made tensor next to one on the device
        with pytest.raises(RuntimeError, match="same device"):
            a.new_zeros(3).index_copy(0, torch.tensor([0, 1, 2]), a)


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer): a random 2-layer LLaMA with a LoRA on every linear layer, on OTHER."""
    tok = char_tokenizer()
    base = tiny_llama(tok)
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lora = LoraConfig(r=2, alpha=4, dropout=0.0)
    model = get_peft_model(base, PeftLoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                target_modules=resolve_targets(lora, base)))
    move(model)
    return model, tok


PROMPT = "### Task:\nSay hi.\n\n### Answer:\n"
RANKED = {"prompt": PROMPT, "candidates": ["Hi there.", "Hello!", "Hey, you."]}
LOSSES = {
    "sft": (sft.make_loss, None, [{"prompt": PROMPT, "response": "Hi."}, {"prompt": "Q?", "response": "A."}]),
    "citing": (citing.make_loss, None, [{"prompt": PROMPT, "response": "Hello."}]),
    "raft": (raft.make_loss, raft.Config(), [{"prompt": PROMPT, "response": "Hey."}]),
    "tuna_all": (tuna.make_loss, tuna.Config(), [RANKED, {"prompt": "Q?", "candidates": ["A."]}]),
    "tuna_best": (tuna.make_loss, tuna.Config(loss=tuna.LossConfig(mle_on="best")), [RANKED]),
    "rrhf": (rrhf.make_loss, rrhf.Config(), [{**RANKED, "rewards": [0.5, 2.0, 1.0]},
                                            {"prompt": "Q?", "candidates": ["A.", "B."], "rewards": [1.0, 0.0]}]),
    "dpo": (dpo.make_loss, dpo.Config(), [{"prompt": PROMPT, "chosen": "Hello!", "rejected": "No."}]),
}


@pytest.mark.parametrize("method", sorted(LOSSES))
@pytest.mark.parametrize("row_tokens", [64, pytest.param(0, marks=pytest.mark.slow)], ids=["packed", "padded"])
def test_every_loss_runs_and_backpropagates_on_its_inputs_device(tiny, method, row_tokens):
    model, tok = tiny
    make_loss, cfg, units = LOSSES[method]
    units = [dict(u) for u in units]
    with other_device():
        if method == "dpo":
            dpo.add_reference_logprobs(model, tok, units, 48, row_tokens=row_tokens)  # the reference scorer too
            assert all(isinstance(u["ref_chosen"], float) for u in units)
        loss, logs = make_loss(tok, cfg, 48, row_tokens)(model, units)
        assert loss.device == OTHER and torch.isfinite(loss.elem)
        loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert all(g is not None and g.device == OTHER for g in grads)
    model.zero_grad(set_to_none=True)


def test_reference_loglik_scores_on_the_models_device(tiny):
    model, tok = tiny
    records = [{"instruction": "Say hi.", "input": "", "output": "Hi."},
               {"instruction": "Name a colour.", "input": "", "output": "Blue."}]
    with other_device():
        scores = reference_loglik(model, tok, records, 48, batch_size=2)
    assert len(scores) == 2 and all(s < 0 for s in scores)
