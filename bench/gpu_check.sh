#!/usr/bin/env bash
# The CUDA paths, checked on a CUDA machine: one line per check.
#   quant4 / quant4_fp4 / quant8: real bitsandbytes layers against the original on the organism
#     (organism:npo_gd vs organism:original; the zoo is built first if not cached), no crash, and
#     the changed-4-bit-codes evidence next to the same share computed from the float weights;
#   bf16_scoring: HFModel.score_answers throughput (requests/s) in bfloat16 on cuda;
#   pytest_pinned: `pytest tests -n 2 -k "$GPU_CHECK_K"`, each xdist worker pinned to its own GPU
#     when two or more are visible.
# Without a CUDA device every check prints "no CUDA device: skipped" and the script exits 0.
# Run from anywhere: bench/gpu_check.sh (PYTHON= picks the interpreter; default .venv/bin/python).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
CHECKS=(quant4 quant4_fp4 quant8 bf16_scoring pytest_pinned)

gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)') ||
  { echo "gpu_check: cannot import torch with $PY"; exit 1; }
if [ "$gpus" -eq 0 ]; then
  for check in "${CHECKS[@]}"; do echo "$check: no CUDA device: skipped"; done
  exit 0
fi
failed=0

"$PY" - <<'EOF' || failed=1
import sys
import time

from unlearncheck import quantization
from unlearncheck.attacks.model import _VARIANTS, quant4, quant4_fp4, quant8
from unlearncheck.backends.hf import HFModel
from unlearncheck.claims import assert_forgotten
from unlearncheck.organism import zoo_dir
from unlearncheck.validity import forget_facts

zoo = zoo_dir(0)
facts = forget_facts(zoo)[:8]
model = HFModel.load(str(zoo / "npo_gd"), device="cuda")
original = HFModel.load(str(zoo / "original"), device="cuda")
ok = True
for attack, kind in ((quant4, "nf4"), (quant4_fp4, "fp4"), (quant8, "int8")):
    try:
        verdict = assert_forgotten(
            model, facts, attacks=[attack], original=original,
            raise_on_fail=False, on_inconclusive="return",
        )
        variant = _VARIANTS[(attack.key, model.content_hash)].model
        layers = sorted({type(m).__name__ for _, m in quantization.quantized_layers(variant)})
        line = f"{attack.name}: ok, no crash, layers {'/'.join(layers)}, {verdict.summary()}"
        if kind != "int8":
            codes = {f.outcome(attack.name).extra.get("changed_4bit_codes") for f in verdict.facts}
            codes.discard(None)
            floats = round(quantization.changed_code_fraction(model.model, original.model, kind), 6)
            same = codes == {floats}
            ok &= same
            line += f"; changed_4bit_codes {sorted(codes, key=str)} (from float weights: {floats})"
            line += "" if same else " MISMATCH"
        print(line, flush=True)
    except Exception as error:  # report and go on to the next attack
        ok = False
        print(f"{attack.name}: CRASH {type(error).__name__}: {error}", flush=True)

try:
    scored = HFModel.load(str(zoo / "original"), device="cuda", dtype="bfloat16")
    requests = [(f.question or f.subject, f" {f.object}") for f in forget_facts(zoo)] * 20
    scored.score_answers(requests[:256], batch_size=64)  # warm up
    start = time.perf_counter()
    scored.score_answers(requests, batch_size=64)
    rate = len(requests) / (time.perf_counter() - start)
    print(f"bf16_scoring: {rate:.0f} requests/s ({len(requests)} requests, batch 64)", flush=True)
except Exception as error:
    ok = False
    print(f"bf16_scoring: CRASH {type(error).__name__}: {error}", flush=True)
sys.exit(0 if ok else 1)
EOF

pinning=$([ "$gpus" -ge 2 ] && echo "one GPU per worker" || echo "1 GPU: both workers share it")
k=${GPU_CHECK_K:-quant or hf_backend}
if out=$("$PY" -m pytest tests -n 2 -q -p no:cacheprovider -k "$k" 2>&1); then
  echo "pytest_pinned: ok ($pinning, -k '$k'): $(tail -n 1 <<<"$out")"
else
  failed=1
  echo "pytest_pinned: FAILED ($pinning, -k '$k'):"
  tail -n 30 <<<"$out"
fi
exit $failed
