"""Times an eager PyTorch reference of a benchmarked step (optional; needs ``torch``).

``torch`` is imported inside the functions, never when ``jkt`` is imported. The reference
implementation itself (models, losses, train step) is not part of ``jkt``: the caller
passes it in as ``reference``, any object with the API of ``experiments/torch_reference.py``:

* ``create(arch, num_classes, width_multiplier) -> torch.nn.Module``
* ``load_flax_variables(module, {"params", "batch_stats"}) -> module`` (copies ``jkt``
  weights in, so that both sides start from the same student and teacher)
* ``supported(objective) -> objective`` (raises if the reference lacks a term)
* ``make_train_step(student, teacher, objective, optimizer, *, mean, std)``
  ``-> step(images uint8 (B, S, S, 3), labels int64 (B,)) -> loss tensor``
"""

from __future__ import annotations

import time

from jkt.bench.harness import JaxBench, summarize, timed_loop
from jkt.bench.methods import TEACHER_ARCH, Method
from jkt.bench.settings import CIFAR100_MEAN, CIFAR100_STD
from jkt.train import CIFAR_RECIPE


def environment(threads: int | None = None) -> dict:
    """``{"torch": version, "torch_device": ...}``; sets ``torch.set_num_threads(threads)``
    first if given (torch's CPU thread pool collapses on an oversubscribed machine)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return {"torch": torch.__version__,
            "torch_device": (torch.cuda.get_device_name() if torch.cuda.is_available()
                             else f"cpu ({torch.get_num_threads()} threads)")}


def run_torch(reference, method: Method, bench: JaxBench, init_vars: dict) -> dict:
    """Times the eager PyTorch reference of ``method`` on the batch of ``bench``, from the
    student variables ``init_vars`` and ``bench``'s teacher.

    Timing as :meth:`JaxBench.run` (``torch.cuda.synchronize()`` after every step on a
    GPU); ``compile_s`` is the first step. Returns :func:`summarize`'s statistics plus
    ``final_loss``, ``peak_bytes`` (CUDA only, else ``None``) and ``device``.
    """
    import torch

    setting = bench.setting
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes; autotuning ends in warm-up
        # fp32 "with TF32 allowed" on both sides: XLA allows TF32 for JAX's default
        # precision on GPUs; torch allows it for cuDNN only by default.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    k, w = setting.num_classes, setting.width_multiplier
    student = reference.load_flax_variables(reference.create(method.student, k, w),
                                            init_vars).to(device)
    teacher = None
    if method.teacher:
        teacher = reference.load_flax_variables(reference.create(TEACHER_ARCH, k, w),
                                                bench.teacher()[2]).to(device)
    opt = torch.optim.Adam(student.parameters(), lr=CIFAR_RECIPE.learning_rate)
    step_fn = reference.make_train_step(student, teacher, reference.supported(
        method.objective), opt, mean=CIFAR100_MEAN, std=CIFAR100_STD)
    images = torch.from_numpy(bench.host_batch["image"]).to(device)
    labels = torch.from_numpy(bench.host_batch["label"]).long().to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    loss = None

    def step():
        nonlocal loss
        loss = step_fn(images, labels)
        sync()

    t0 = time.perf_counter()
    step()
    first_s = time.perf_counter() - t0
    times = timed_loop(step, setting)
    result = summarize(times, first_s, setting.batch_size)
    result["final_loss"] = float(loss)
    result["peak_bytes"] = (int(torch.cuda.max_memory_allocated()) if device.type == "cuda"
                            else None)
    result["device"] = str(device)
    return result
