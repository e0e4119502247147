#!/usr/bin/env python3
"""Renders chat templates with Python's jinja2, the way Hugging Face `transformers` (and so
vLLM) render them, and writes the expected strings that crates/server/tests/chat_template.rs
compares cordial's minijinja rendering with.

Templates: the default model's own `tokenizer.chat_template` (read from its GGUF) and two
synthetic ones that use what real templates use (namespace, loop controls, Python string
methods, tojson, raise_exception).

Usage: scripts/make-chat-template-reference.py [path/to/model.gguf]
(jinja2 is installed into a venv under ~/.cache/cordial/jinja-venv when missing.)
"""
import json
import os
import struct
import subprocess
import sys

VENV = os.path.expanduser("~/.cache/cordial/jinja-venv")
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "server", "tests", "fixtures", "chat-templates.json")

try:
    import jinja2  # noqa: F401
except ImportError:
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
        subprocess.check_call([py, "-m", "pip", "install", "-q", "jinja2"])
    if os.path.realpath(sys.executable) != os.path.realpath(py):
        os.execv(py, [py] + sys.argv)
    raise

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def gguf_metadata(path, wanted):
    """The string values of `wanted` keys (and token texts by id) from a GGUF file."""
    out = {}
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
        (version,) = struct.unpack("<I", f.read(4))
        _, nkv = struct.unpack("<QQ", f.read(16))

        def rstr():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8")

        sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

        def rval(t):
            if t == 8:
                return rstr()
            if t == 9:
                (at,) = struct.unpack("<I", f.read(4))
                (n,) = struct.unpack("<Q", f.read(8))
                return [rval(at) for _ in range(n)]
            fmt = "<" + sizes[t]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        for _ in range(nkv):
            key = rstr()
            (t,) = struct.unpack("<I", f.read(4))
            value = rval(t)
            if key in wanted:
                out[key] = value
    return out


def default_model_template(path):
    m = gguf_metadata(path, {"tokenizer.chat_template", "tokenizer.ggml.tokens",
                             "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"})
    tokens = m["tokenizer.ggml.tokens"]
    return {
        "source": m["tokenizer.chat_template"],
        "bos": tokens[m["tokenizer.ggml.bos_token_id"]],
        "eos": tokens[m["tokenizer.ggml.eos_token_id"]],
    }


LLAMA3_LIKE = """{{- bos_token }}
{%- set ns = namespace(system='') %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- set ns.system = message['content'] | trim %}
        {%- continue %}
    {%- endif %}
    {%- if loop.index0 > 0 and message['role'] == messages[loop.index0 - 1]['role'] %}
        {{- raise_exception('Conversation roles must alternate') }}
    {%- endif %}
    {%- if ns.system and loop.first %}
        {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system + '<|eot_id|>' }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'].strip() + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

BLOCKS_AND_JSON = """{% for m in messages %}
  {% if m.role == 'user' %}
[USER] {{ m.content.upper() if shout else m.content }}
  {% elif m.role.startswith('assist') %}
[BOT] {{ m.content }}{{ eos_token }}
  {% else %}
[{{ m.role | upper }}] {{ m | tojson }}
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}[BOT]{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hi there"},
     {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "  Name three colours. \n"}],
    [{"role": "user", "content": "Unicode: é, 漢字, emoji 🙂, quotes \"x\" and <tags> & stuff"}],
    [{"role": "developer", "content": "Line one\nLine two"},
     {"role": "user", "content": ""}],
]


def render(tpl, messages, add_generation_prompt, kwargs):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    t = env.from_string(tpl["source"])
    try:
        return t.render(messages=messages, add_generation_prompt=add_generation_prompt,
                        bos_token=tpl["bos"], eos_token=tpl["eos"], **kwargs)
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/cordial/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    templates = {
        "default-model": default_model_template(model),
        "llama3-like": {"source": LLAMA3_LIKE, "bos": "<|begin_of_text|>", "eos": "<|eot_id|>"},
        "blocks-and-json": {"source": BLOCKS_AND_JSON, "bos": "<s>", "eos": "</s>"},
    }
    cases = []
    for name, tpl in templates.items():
        for conv in CONVERSATIONS:
            for agp in (True, False):
                kwargs = {"shout": True} if name == "blocks-and-json" and agp else {}
                cases.append({"template": name, "messages": conv, "add_generation_prompt": agp,
                              "kwargs": kwargs,
                              "expected": render(tpl, conv, agp, kwargs)})
    # Roles that do not alternate: the template's raise_exception.
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    cases.append({"template": "llama3-like", "messages": bad, "add_generation_prompt": True,
                  "kwargs": {}, "expected": render(templates["llama3-like"], bad, True, {})})
    doc = {"generator": "scripts/make-chat-template-reference.py (Python jinja2 %s)" % jinja2.__version__,
           "templates": templates, "cases": cases}
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote %d cases to %s" % (len(cases), os.path.normpath(OUT)))


if __name__ == "__main__":
    main()
