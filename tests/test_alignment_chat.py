"""llmbook.alignment.chat and llmbook.alignment.packing: chat rendering, SFT labels as trl makes them, packing.

Two tokenizers: SmolLM2-135M-Instruct's (its stock ChatML template with a default system prompt, no generation
markers), from the converted directory when the artifact cache holds it, else from the GGUF file (~10 s); and a
300-token byte-level BPE trained here on 5 KB of the bundled English text, exported as the book's chapter-1
tokenizer is, then given ChatML by ``add_chat_format``. The references are transformers' ``apply_chat_template``
and trl 1.16's own ``SFTTrainer`` dataset preparation and collator; the models are tiny seeded Llamas.
"""

from __future__ import annotations

import copy

import pytest
import torch
from jinja2 import TemplateError
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from llmbook.alignment.chat import (
    CHATML_TEMPLATE,
    IM_END,
    IM_START,
    add_chat_format,
    add_generation_markers_chatml,
    assistant_spans,
    encode_completion,
    encode_conversation,
    render_chat,
)
from llmbook.alignment.packing import pack, packed_attention_mask
from llmbook.chain.tokenizer import END_OF_TEXT, SPECIAL_TOKENS
from llmbook.data import corpus_text
from llmbook.tokenization import train_bpe
from llmbook.tokenization.export import export_pretrained
from llmbook.training.finetune import IGNORE, Encoded, collate

CLOSE = 1e-5

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
     {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 2*3?"},
     {"role": "assistant", "content": "It is 6."}],
    # Whitespace at both ends of a reply, a non-ASCII reply split into byte tokens, and a last user turn
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": " Blue,\n\nor red "},
     {"role": "user", "content": "In Chinese?"}, {"role": "assistant", "content": "蓝色"},
     {"role": "user", "content": "thanks"}],
]


@pytest.fixture(scope="module")
def smollm2(smollm2_tokenizer):
    return copy.deepcopy(smollm2_tokenizer)  # this module's own copy: a test may change it


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory):
    """A chapter-1-style tokenizer folder: byte-level BPE, ``<|endoftext|>`` its only special token and eos."""
    bpe = train_bpe(corpus_text("en", max_bytes=5000), 300, SPECIAL_TOKENS)
    return export_pretrained(bpe, tmp_path_factory.mktemp("book_tokenizer"), eos_token=END_OF_TEXT)


@pytest.fixture(scope="module")
def book(base_dir):
    return add_chat_format(AutoTokenizer.from_pretrained(base_dir))[0]


@pytest.fixture(params=["book", "smollm2"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


def tiny_llama(vocab_size: int, *, hidden: int = 32, layers: int = 2, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def trl_batch(tokenizer, rows: dict[str, list], directory, **options) -> dict[str, torch.Tensor]:
    """trl 1.16's tokenized, labelled and collated batch of ``rows`` (SFTTrainer's own preparation)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(directory), report_to="none", use_cpu=True, bf16=False, max_length=None, **options)
    trainer = SFTTrainer(model=tiny_llama(len(tokenizer), hidden=16, layers=1), args=args,
                         train_dataset=Dataset.from_dict(rows), processing_class=tokenizer)
    prepared = trainer.train_dataset
    return trainer.data_collator([prepared[i] for i in range(len(prepared))])


# --- rendering --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("generation_prompt", [False, True])
def test_render_chat_equals_apply_chat_template(tokenizer, generation_prompt: bool) -> None:
    for messages in CONVERSATIONS:
        ours = render_chat(tokenizer.chat_template, messages, add_generation_prompt=generation_prompt,
                           **tokenizer.special_tokens_map)
        assert ours == tokenizer.apply_chat_template(messages, tokenize=False,
                                                     add_generation_prompt=generation_prompt)
    # SmolLM2 adds its default system prompt only when the conversation has none
    assert render_chat(tokenizer.chat_template, CONVERSATIONS[1]).startswith("<|im_start|>system\nBe brief.")


def test_render_chat_helpers_behave_as_in_transformers(book) -> None:
    messages = [{"role": "user", "content": "café <b>&</b>"}]
    template = ("{% generation %}{{ messages | tojson }}{% endgeneration %}|{{ messages[0] | tojson(indent=1) }}|"
                "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}x{% endfor %}"
                "{{ strftime_now('%Y') | length }}")
    ours = render_chat(template, messages)
    assert ours == book.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert '"café <b>&</b>"' in ours and ours.endswith("4")  # no HTML escaping, no ASCII escaping
    refusing = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('needs a system turn') }}{% endif %}"
    with pytest.raises(TemplateError, match="needs a system turn"):
        render_chat(refusing, messages)


# --- ChatML for the book tokenizer -------------------------------------------------------------------------------

def test_add_chat_format_adds_two_unmergeable_special_tokens(base_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    before = len(tokenizer)
    tokenizer, added = add_chat_format(tokenizer)
    assert added == 2 and len(tokenizer) == before + 2
    start, end = tokenizer.convert_tokens_to_ids([IM_START, IM_END])
    assert {start, end} == {before, before + 1}
    assert tokenizer(IM_START, add_special_tokens=False)["input_ids"] == [start]
    ids = tokenizer(f"x{IM_START}user\nhi{IM_END}\n", add_special_tokens=False)["input_ids"]
    assert ids.count(start) == 1 and ids.count(end) == 1  # glued to text, still one id each
    assert tokenizer.decode(ids) == f"x{IM_START}user\nhi{IM_END}\n"
    assert (tokenizer.eos_token, tokenizer.pad_token) == (IM_END, END_OF_TEXT)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert add_chat_format(tokenizer)[1] == 0 and len(tokenizer) == before + 2  # idempotent


def test_assistant_spans_cover_reply_and_end_of_turn(tokenizer) -> None:
    for template in (tokenizer.chat_template, CHATML_TEMPLATE):
        for messages in CONVERSATIONS:
            text = render_chat(template, messages)
            replies = [m["content"] + IM_END for m in messages if m["role"] == "assistant"]
            assert [text[s:e] for s, e in assistant_spans(template, messages)] == replies


def test_generation_markers_for_chatml_templates(smollm2) -> None:
    patched = add_generation_markers_chatml(smollm2.chat_template)
    assert "{% generation %}" in patched and add_generation_markers_chatml(patched) == patched
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            assert render_chat(patched, messages, add_generation_prompt=prompt) == render_chat(
                smollm2.chat_template, messages, add_generation_prompt=prompt)
    plain = CHATML_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert render_chat(add_generation_markers_chatml(plain), CONVERSATIONS[1]) == render_chat(plain, CONVERSATIONS[1])
    llama3 = ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content']"
              " + '<|eot_id|>' }}{% endfor %}")
    with pytest.raises(ValueError, match="not a ChatML-style template"):
        add_generation_markers_chatml(llama3)


# --- labels equal trl's ------------------------------------------------------------------------------------------

def test_trl_refuses_smollm2_stock_template_for_assistant_only_loss(smollm2, tmp_path) -> None:
    with pytest.raises(ValueError, match="not training-compatible"):
        trl_batch(copy.deepcopy(smollm2), {"messages": CONVERSATIONS}, tmp_path, assistant_only_loss=True)


def test_assistant_only_labels_equal_trl(tokenizer, tmp_path) -> None:
    """trl needs generation markers (SmolLM2's are added for it); ours renders prefixes of the stock template."""
    marked = copy.deepcopy(tokenizer)
    marked.chat_template = add_generation_markers_chatml(tokenizer.chat_template)
    reference = trl_batch(marked, {"messages": CONVERSATIONS}, tmp_path, assistant_only_loss=True)
    ours = collate([encode_conversation(tokenizer, m, max_len=512) for m in CONVERSATIONS], tokenizer.pad_token_id)
    assert torch.equal(ours["input_ids"], reference["input_ids"])
    assert torch.equal(ours["labels"], reference["labels"])
    kept = tokenizer.decode(ours["labels"][1][ours["labels"][1] != IGNORE])
    assert kept == f"5{IM_END}It is 6.{IM_END}"  # both replies, each with its end, nothing else


def test_completion_only_labels_equal_trl(tokenizer, tmp_path) -> None:
    prompts = [m[:-1] for m in CONVERSATIONS[:2]] + [CONVERSATIONS[2][:3]]
    completions = [m[-1:] for m in CONVERSATIONS[:2]] + [CONVERSATIONS[2][3:4]]
    reference = trl_batch(copy.deepcopy(tokenizer), {"prompt": prompts, "completion": completions}, tmp_path)
    ours = collate([encode_completion(tokenizer, p, c, max_len=512) for p, c in zip(prompts, completions, strict=True)],
                   tokenizer.pad_token_id)
    assert torch.equal(ours["input_ids"], reference["input_ids"])
    assert torch.equal(ours["labels"], reference["labels"])
    as_text = encode_completion(tokenizer, prompts[0], completions[0][0]["content"], max_len=512)
    assert as_text.labels == ours["labels"][0][: len(as_text.labels)].tolist()
    # trl's completion is everything after the prompt, the newline after <|im_end|> included
    assert tokenizer.decode([t for t in as_text.labels if t != IGNORE]) == f"Hello!{IM_END}\n"


def test_bad_conversations_are_refused(book) -> None:
    with pytest.raises(ValueError, match="has no assistant turn"):
        encode_conversation(book, [{"role": "user", "content": "Hi"}], max_len=512)
    length = len(encode_conversation(book, CONVERSATIONS[1], max_len=512).input_ids)
    with pytest.raises(ValueError, match=f"has {length} tokens > max_len={length - 1}"):
        encode_conversation(book, CONVERSATIONS[1], max_len=length - 1)
    assert encode_conversation(book, CONVERSATIONS[1], max_len=length - 1, truncation="drop") is None
    assert encode_conversation(book, CONVERSATIONS[1], max_len=length, truncation="drop") is not None
    with pytest.raises(ValueError, match="truncation must be"):
        encode_conversation(book, CONVERSATIONS[1], max_len=512, truncation="cut")
    with pytest.raises(ValueError, match="completion is empty"):
        encode_completion(book, CONVERSATIONS[0][:1], [], max_len=512)
    # Earlier replies rendered shorter than the last one (as "thinking" templates do): not prefix-preserving
    forgetful = copy.deepcopy(book)
    forgetful.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' }}{% if m['role'] == 'assistant' and "
                               "not loop.last %}...{% else %}{{ m['content'] }}{% endif %}\n{% endfor %}")
    with pytest.raises(ValueError, match="not prefix-preserving at message 2"):
        encode_conversation(forgetful, CONVERSATIONS[1], max_len=512)
    forgetful.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        encode_conversation(forgetful, CONVERSATIONS[0], max_len=512)


# --- packing -----------------------------------------------------------------------------------------------------

def test_pack_first_fit_layout() -> None:
    docs = [Encoded(input_ids=list(range(10 * i, 10 * i + n)), labels=list(range(10 * i, 10 * i + n)))
            for i, n in enumerate((5, 3, 4, 2))]
    first, second = pack(docs, max_len=7)  # 5 -> new, 3 -> new, 4 -> second (full), 2 -> first (full)
    assert (first.sources, second.sources) == ((0, 3), (1, 2))
    assert first.input_ids.tolist() == [0, 1, 2, 3, 4, 30, 31]
    assert first.labels.tolist() == [IGNORE, 1, 2, 3, 4, IGNORE, 31]
    assert first.position_ids.tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert first.document_ids.tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert second.boundaries == [0, 3, 7]
    with pytest.raises(ValueError, match="document 1 has 4 tokens"):
        pack(docs[1:], max_len=3)


def test_packed_attention_mask_is_block_diagonal_causal() -> None:
    mask = packed_attention_mask(torch.tensor([0, 1, 2, 0, 1]))
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    assert mask.shape == (1, 1, 5, 5) and mask.dtype == torch.bool and torch.equal(mask[0, 0], expected.bool())
    additive = packed_attention_mask(torch.tensor([[0, 1, 0]]), dtype=torch.float32)[0, 0]
    assert additive[1, 0] == 0 and additive[2, 0] == torch.finfo(torch.float32).min


@pytest.fixture(scope="module")
def three(book) -> list[Encoded]:
    encoded = [encode_conversation(book, m, max_len=512) for m in CONVERSATIONS]
    assert len({len(e.input_ids) for e in encoded}) == 3
    return encoded


def unpacked(model: LlamaForCausalLM, encoded: list[Encoded]) -> tuple[list[torch.Tensor], float]:
    """Each document's logits run alone, and the token-weighted mean of their losses."""
    logits, loss_sum, targets = [], 0.0, 0
    for e in encoded:
        out = model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels]))
        n = sum(label != IGNORE for label in e.labels[1:])
        logits.append(out.logits[0])
        loss_sum, targets = loss_sum + out.loss.item() * n, targets + n
    return logits, loss_sum / targets


@pytest.mark.parametrize("mechanism", ["sdpa+mask", "eager+mask", "sdpa+position_ids", "eager+position_ids"])
@torch.no_grad()
def test_packed_equals_unpacked(book, three, mechanism: str) -> None:
    attn, how = mechanism.split("+")
    model = tiny_llama(len(book), attn=attn)
    (packed,) = pack(three, max_len=sum(len(e.input_ids) for e in three))
    if how == "mask":  # the library's way: explicit 4-D mask, correct whatever the cache setting
        inputs = packed.model_inputs(dtype=None if attn == "sdpa" else torch.float32)
    else:  # trl's way: transformers infers documents from restarting positions, only without a cache
        inputs = {"input_ids": packed.input_ids[None], "labels": packed.labels[None],
                  "position_ids": packed.position_ids[None], "use_cache": False}
    out = model(**inputs)
    logits, loss = unpacked(model, three)
    for (start, end), alone in zip(zip(packed.boundaries, packed.boundaries[1:]), logits, strict=True):
        torch.testing.assert_close(out.logits[0, start:end], alone, rtol=0, atol=CLOSE)
    assert abs(out.loss.item() - loss) < CLOSE


@torch.no_grad()
def test_packed_loss_has_no_cross_document_targets(book, three) -> None:
    """Every token trained (pretraining-style): the boundary labels are what keeps the packed loss exact."""
    model = tiny_llama(len(book))
    full = [Encoded(input_ids=e.input_ids, labels=e.input_ids) for e in three]
    (packed,) = pack(full, max_len=sum(len(e.input_ids) for e in full))
    _, loss = unpacked(model, full)
    assert abs(model(**packed.model_inputs()).loss.item() - loss) < CLOSE
    crossing = packed.labels.clone()
    crossing[packed.position_ids == 0] = packed.input_ids[packed.position_ids == 0]  # last token -> next first
    inputs = {**packed.model_inputs(), "labels": crossing[None]}
    assert abs(model(**inputs).loss.item() - loss) > 1e-4


@torch.no_grad()
def test_without_the_block_mask_documents_attend_across(book, three) -> None:
    model = tiny_llama(len(book))
    (packed,) = pack(three, max_len=sum(len(e.input_ids) for e in three))
    logits, _ = unpacked(model, three)
    start = packed.boundaries[1]  # the second document, which could see the first
    alone = logits[1]
    plain = model(input_ids=packed.input_ids[None]).logits[0, start:start + len(alone)]
    # position_ids alone with the default use_cache=True: transformers skips the packed-sequence check
    cached = model(input_ids=packed.input_ids[None], position_ids=packed.position_ids[None]).logits[0]
    for wrong in (plain, cached[start:start + len(alone)]):
        assert (wrong - alone).abs().max() > 1e-3
