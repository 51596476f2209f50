"""Chat templates and the supervised fine-tuning masks they imply: which tokens of a conversation are trained.

A chat model reads a conversation as one string: a Jinja2 *chat template* shipped with the tokenizer turns the
list of ``{"role", "content"}`` messages into text with role headers and end-of-turn markers, e.g. ChatML's
``<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n``. Supervised fine-tuning trains
the model to write the assistant's replies, so the loss covers the reply tokens and the end-of-turn marker (the
model must learn to stop), and none of the system, user or header tokens: their labels are ``IGNORE``.

Where are the replies in the rendered text? Transformers and trl ask the template: its assistant content has to
be wrapped in ``{% generation %}...{% endgeneration %}`` (and most shipped templates, SmolLM2's included, are not).
This module asks the rendering instead. For a *prefix-preserving* template (rendering more messages only appends
text), the reply to turn ``i`` is what the conversation up to and including turn ``i`` adds to the conversation
up to turn ``i - 1`` followed by the generation prompt (the assistant header). That works on any such template
without markers, and the tests check that it gives the very labels trl 1.16 computes from the markers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from jinja2 import Environment, TemplateError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmbook.training.finetune import IGNORE, Encoded

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

# Plain ChatML without a default system prompt. The generation block holds the reply and its <|im_end|>, not the
# newline after it: generation stops at <|im_end|>, so the newline is the template's separator, never sampled.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

Message = dict[str, Any]


class _GenerationBlock(Extension):
    """``{% generation %}body{% endgeneration %}`` renders ``body`` unchanged: the markers only tell transformers
    where replies are, and this module finds them by rendering instead."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)  # the `generation` token
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; transformers replaces it with plain json.dumps
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    # The environment transformers renders chat templates in: sandboxed (a template is code from the hub),
    # block tags eat their own line and indentation, and the same three helpers
    env: Environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                     extensions=[_GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render_chat(template: str, messages: Sequence[Message], *, add_generation_prompt: bool = False,
                **variables: Any) -> str:
    """``messages`` rendered by the Jinja2 chat ``template``, as ``apply_chat_template(tokenize=False)`` does.

    ``add_generation_prompt`` appends the assistant header, for the model to write the next reply. ``variables``
    are further template variables: transformers passes the tokenizer's ``special_tokens_map`` (``bos_token``,
    ``eos_token``, ...), which some templates use.
    """
    return _compile(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     **variables)


def _template_of(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # a template shipped as named variants: transformers uses "default"
        template = template.get("default")
    if not template:
        raise ValueError("the tokenizer has no chat template: conversations are rendered with it")
    return template


_NEWLINE = r"(?:\n|\\n)"  # a newline inside a Jinja string literal, written as itself or as an escape
# The one expression of a ChatML template that renders every turn, e.g. SmolLM2's
# {{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}
_CHATML_TURN = re.compile(
    r"\{\{\s*(?P<q>['\"])<\|im_start\|>(?P=q)\s*\+\s*"
    r"(?P<msg>[A-Za-z_]\w*)(?:\[\s*['\"]role['\"]\s*\]|\.role)\s*\+\s*"
    rf"['\"]{_NEWLINE}['\"]\s*\+\s*"
    r"(?P=msg)(?:\[\s*['\"]content['\"]\s*\]|\.content)\s*\+\s*"
    rf"['\"]<\|im_end\|>(?P<nl1>{_NEWLINE})?['\"]"
    rf"(?:\s*\+\s*['\"](?P<nl2>{_NEWLINE})['\"])?"
    r"\s*\}\}"
)

_PROBES: tuple[list[Message], ...] = (  # conversations that must render the same with and without markers
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
     {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 2*3?"},
     {"role": "assistant", "content": "6"}],
)


def add_generation_markers_chatml(template: str) -> str:
    """A copy of a ChatML-style ``template`` with ``{% generation %}`` around each reply and its ``<|im_end|>``.

    trl's ``assistant_only_loss=True`` needs these markers, and SmolLM2's stock template has none. The template
    must render every turn with one expression ``'<|im_start|>' + message['role'] + '\\n' + message['content'] +
    '<|im_end|>' (+ '\\n')``; that expression becomes an ``if`` on the role whose assistant branch carries the
    markers. A template that already has markers comes back unchanged; any other raises ValueError, as does a
    result that renders differently from ``template`` on a few probe conversations.
    """
    if re.search(r"\{%-?\s*generation\s*-?%\}", template):
        return template
    matches = list(_CHATML_TURN.finditer(template))
    if len(matches) != 1:
        raise ValueError(f"not a ChatML-style template: {len(matches)} expressions render "
                         "'<|im_start|>' + role + '\\n' + content + '<|im_end|>', exactly 1 is needed")
    match = matches[0]
    msg = match["msg"]
    separator = "\\n" * sum(match[group] is not None for group in ("nl1", "nl2"))  # what followed <|im_end|>
    turn = (f"{{% if {msg}['role'] == 'assistant' %}}{{{{ '<|im_start|>assistant\\n' }}}}"
            f"{{% generation %}}{{{{ {msg}['content'] + '<|im_end|>' }}}}{{% endgeneration %}}"
            f"{{{{ '{separator}' }}}}{{% else %}}{match[0]}{{% endif %}}")
    patched = template[:match.start()] + turn + template[match.end():]
    for probe in _PROBES:
        for prompt in (False, True):
            if render_chat(patched, probe, add_generation_prompt=prompt) != render_chat(
                    template, probe, add_generation_prompt=prompt):
                raise ValueError("adding generation markers changed how the template renders: patch it by hand")
    return patched


def add_chat_format(tokenizer: Any) -> tuple[Any, int]:
    """Give a base tokenizer (the book's, with only ``<|endoftext|>``) ChatML: returns ``(tokenizer, added)``.

    ``<|im_start|>`` and ``<|im_end|>`` become special tokens: one id each, matched before BPE runs, so no text
    merges with them. The tokenizer is changed in place: its chat template becomes ``CHATML_TEMPLATE``, its eos
    token ``<|im_end|>`` (generation stops at the end of the reply) and, if it had none, its pad token the old eos
    (padding is then never confused with the trained end-of-turn token). ``added`` is how many ids are new (0 when
    they were there already): the model's embeddings must grow to match, ``model.resize_token_embeddings(len(
    tokenizer))``, before training, and its generation config take the new ``eos_token_id``.
    """
    old_eos = tokenizer.eos_token
    # Strings become special, unnormalized AddedTokens; False keeps any extra special tokens already there
    added = tokenizer.add_special_tokens({"extra_special_tokens": [IM_START, IM_END]},
                                         replace_extra_special_tokens=False)
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None and old_eos not in (None, IM_END):
        tokenizer.pad_token = old_eos
    return tokenizer, added


def assistant_spans(template: str, messages: Sequence[Message], **variables: Any) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of each assistant reply in ``render_chat(template, messages)``.

    A span holds the reply and the template's end-of-turn marker, not the whitespace after the marker (the
    separator before the next turn). It is found by rendering prefixes of the conversation, so the template needs
    no markers but must be prefix-preserving: the rendering up to a reply's header, and up to the reply, must
    both begin the full rendering. ValueError otherwise, naming the turn.
    """
    full = render_chat(template, messages, **variables)
    spans = []
    for turn, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        header = render_chat(template, messages[:turn], add_generation_prompt=True, **variables)
        through = render_chat(template, messages[:turn + 1], **variables)
        if not (through.startswith(header) and full.startswith(through)):
            raise ValueError(f"the chat template is not prefix-preserving at message {turn}: the conversation "
                             "rendered up to it does not begin the full rendering, so its reply cannot be located")
        spans.append((len(header), len(through.rstrip())))
    return spans


def _labelled(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]], *, max_len: int,
              truncation: str) -> Encoded | None:
    """Token ids of ``text``, labelled where a token overlaps a span; the length policy applied."""
    if truncation not in ("error", "drop"):
        raise ValueError(f"truncation must be 'error' or 'drop', got {truncation!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("token labels come from character offsets, which only a fast tokenizer gives")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoding["input_ids"]
    if len(ids) > max_len:
        if truncation == "drop":
            return None
        raise ValueError(f"a conversation has {len(ids)} tokens > max_len={max_len}: raise max_len, "
                         "or pass truncation='drop' to skip it")
    # A token that straddles a span edge is labelled: it is the first or last token the model must write
    labels = [token if any(s < end and e > start for start, end in spans) else IGNORE
              for token, (s, e) in zip(ids, encoding["offset_mapping"], strict=True)]
    return Encoded(input_ids=ids, labels=labels)


def encode_conversation(tokenizer: Any, messages: Sequence[Message], *, max_len: int,
                        truncation: Literal["error", "drop"] = "error") -> Encoded | None:
    """Token ids of the rendered conversation, labelled on every assistant reply and its end-of-turn marker.

    Assistant-only loss: all replies of a multi-turn conversation are trained, each in the context of the turns
    before it; everything else is ``IGNORE``. No assistant turn -> ValueError. Longer than ``max_len`` tokens:
    ``truncation="error"`` raises ValueError with the length; ``"drop"`` returns None, for the caller to skip the
    conversation and count it. Conversations are never cut: a cut one would train on a reply without its end.
    """
    template = _template_of(tokenizer)
    variables = tokenizer.special_tokens_map
    spans = assistant_spans(template, messages, **variables)
    if not spans:
        raise ValueError("the conversation has no assistant turn: nothing to train on")
    return _labelled(tokenizer, render_chat(template, messages, **variables), spans, max_len=max_len,
                     truncation=truncation)


def encode_completion(tokenizer: Any, prompt_messages: Sequence[Message], completion: str | Sequence[Message], *,
                      max_len: int, truncation: Literal["error", "drop"] = "error") -> Encoded | None:
    """Completion-only loss for prompt/completion data: labels on everything the completion adds to the prompt.

    The prompt is rendered with the generation prompt; ``completion`` is the reply (a string, i.e. one assistant
    message) or a list of messages. As in trl, the trained part is everything after the rendered prompt, the
    template's separator after the end-of-turn marker included. Length policy as in ``encode_conversation``.
    """
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    if not completion:
        raise ValueError("the completion is empty: nothing to train on")
    template = _template_of(tokenizer)
    variables = tokenizer.special_tokens_map
    prompt = render_chat(template, prompt_messages, add_generation_prompt=True, **variables)
    text = render_chat(template, [*prompt_messages, *completion], **variables)
    if not text.startswith(prompt):
        raise ValueError("the chat template is not prefix-preserving: the rendered prompt does not begin the "
                         "rendered prompt + completion")
    return _labelled(tokenizer, text, [(len(prompt), len(text))], max_len=max_len, truncation=truncation)
