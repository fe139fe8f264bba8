"""A tiny seeded Llama whose chat template has a tools section (Qwen2.5's template), and the
prompts transformers renders for chats with tools, for the tool-call tests. Run with the peer venv
(transformers 4.51.3 + torch):

    ~/.cache/dlc-peer/venv/bin/python models/make_tool_fixtures.py

Writes models/tiny/llama-tools-lm/ and models/golden/text-generation/llama-tools-lm-chat.json:
for each case its messages and tools, `apply_chat_template(messages, tools=tools,
add_generation_prompt=True, tokenize=False)` and the prompt's token ids.
"""
import json
import os
import sys

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import GOLDEN, TINY, save  # noqa: E402
from make_generation_fixtures import tokenizer  # noqa: E402

# Qwen2.5-Instruct's chat template (its tools section and tool-call / tool-response turns).
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Lima", "Oslo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {
    "name": "local_time", "description": "The time in a time zone (ü, 東京).",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}},
                   "required": ["zone"]}}}

CASES = [
    {"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": [WEATHER]},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Weather in Oslo, and the time there?"}], "tools": [WEATHER, CLOCK]},
    {"messages": [{"role": "user", "content": "Weather in Lima?"},
                  {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
                      "name": "get_weather", "arguments": {"city": "Lima", "unit": "celsius"}}}]},
                  {"role": "tool", "content": "{\"temperature\": 18}"}], "tools": [WEATHER]},
    {"messages": [{"role": "user", "content": "Hello!"}], "tools": None},
]


def main():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rope_theta=10000.0, initializer_range=0.1, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    fast = tokenizer(add_bos=True)
    fast.chat_template = QWEN25_TEMPLATE
    out = save("llama-tools-lm", LlamaForCausalLM(config), fast)
    tok = AutoTokenizer.from_pretrained(out)
    records = []
    for case in CASES:
        prompt = tok.apply_chat_template(case["messages"], tools=case["tools"], add_generation_prompt=True,
                                         tokenize=False)
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        records.append({**case, "prompt": prompt, "ids": ids})
    path = os.path.join(GOLDEN, "text-generation", "llama-tools-lm-chat.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out} and {path}")


if __name__ == "__main__":
    main()
