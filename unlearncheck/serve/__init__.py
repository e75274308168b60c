"""An OpenAI-compatible HTTP server over a Hugging Face checkpoint, built on ``http.server``.

`serve` starts one in a daemon thread (tests, notebooks); `run_forever` serves in the foreground
(the command line). Endpoints:

* ``GET /v1/models`` and ``GET /v1/models/{id}``: the one model served.
* ``POST /v1/completions``: prompts as strings or token ids, ``max_tokens``, ``temperature``
  (0 = greedy), ``top_p``, ``n``, ``seed``, ``stop``, ``logprobs`` (the top-k alternatives of
  each token, legacy format) and ``echo`` (with ``max_tokens: 0`` and ``logprobs`` this scores
  the prompt, which is how lm-evaluation-harness gets loglikelihoods).
* ``POST /v1/chat/completions``: messages rendered by the tokenizer's chat template, or as
  ``role: content`` lines ending in ``assistant:`` when it has none; ``logprobs`` and
  ``top_logprobs`` in the chat format.

The model reads a prompt's tokens (encoded without special tokens) after the tokenizer's BOS
token, when it has one and the prompt does not already start with it, as `HFModel` does. That
BOS is never echoed: it is what the first echoed token is conditioned on, so the first token's
logprob is null only for tokenizers without a BOS token. Logprobs are those of the model's raw
next-token distribution (before temperature and top-p); text offsets index the choice's text.
A choice that ends with the end-of-sequence token lists it (as e.g. ``</s>``) in its logprobs and
usage but not in its text, as OpenAI and vLLM do; lm-evaluation-harness's ``[ctxlen:-1]``
slicing of echoed logprobs relies on it.
Requests are served one at a time: every model and tokenizer call holds one process-wide lock
(``/v1/models`` needs none, so it answers while a request runs). A request may ask for at most
``max_work`` generated tokens (prompts × n × max_tokens; `DEFAULT_MAX_WORK`, ``--max-work``),
else 413; when its client disconnects, its work stops at the next forward pass of the model.

Modules: `requests` (request fields, checked), `engine` (the model: tokenizing, generating,
scoring), `app` (the API, independent of HTTP) and `server` (HTTP).
"""

from unlearncheck.serve.app import App
from unlearncheck.serve.requests import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MAX_WORK,
    MAX_N,
    MAX_STOP,
    MAX_TOP_LOGPROBS,
    APIError,
    chat_prompt,
)
from unlearncheck.serve.server import MAX_BODY_BYTES, ModelServer, run_forever, serve

__all__ = [
    "DEFAULT_CHAT_MAX_TOKENS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_WORK",
    "MAX_BODY_BYTES",
    "MAX_N",
    "MAX_STOP",
    "MAX_TOP_LOGPROBS",
    "APIError",
    "App",
    "ModelServer",
    "chat_prompt",
    "run_forever",
    "serve",
]
