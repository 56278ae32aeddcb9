"""The demo models' chat template (Alpaca-style, as nekomata-instruction uses) and reply format."""

# Jinja, as stored in tokenizer_config.json; `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{{ '以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。\\n\\n' }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '### 指示:\\n' + m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ '### 応答:\\n' + m['content'] + eos_token + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### 応答:\\n' }}{% endif %}"
)

# Every demo instruction reply starts with this; adherence = a single line that starts with it, then EOS.
ANSWER_PREFIX = "回答："
ADHERENCE_REGEX = r"^回答[：:][^\n]{2,}$"  # NFKC tokenizers give the colon back half-width
