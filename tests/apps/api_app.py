"""An app that uses the openai and anthropic clients unchanged; ``opentelemetry-instrument python api_app.py CALL…``.

Each argument names one call: ``chat`` (chat.completions.create), ``parse`` (chat.completions.parse), ``responses`` (responses.create), ``embeddings``,
``messages`` (anthropic messages.create). The clients read OPENAI_BASE_URL / ANTHROPIC_BASE_URL and their keys as any
app's do. What came back is printed as one JSON line.
"""

import json
import sys

from pydantic import BaseModel

QUESTION = "Where is my parcel?"


class Answer(BaseModel):
    answer: str


def chat() -> object:
    import openai

    with openai.OpenAI(max_retries=0) as client:
        completion = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": QUESTION}])
    return {"model": completion.model, "text": completion.choices[0].message.content}


def parse() -> object:
    import openai

    with openai.OpenAI(max_retries=0) as client:
        completion = client.chat.completions.parse(
            model="auto", messages=[{"role": "user", "content": QUESTION}], response_format=Answer
        )
    parsed = completion.choices[0].message.parsed
    return {"model": completion.model, "parsed": parsed.model_dump() if parsed else None}


def responses() -> object:
    import openai

    with openai.OpenAI(max_retries=0) as client:
        response = client.responses.create(model="auto", input=QUESTION)
    return {"model": response.model, "text": response.output_text}


def embeddings() -> object:
    import openai

    with openai.OpenAI(max_retries=0) as client:
        embedded = client.embeddings.create(model="text-embedding-3-small", input=QUESTION)
    return {"model": embedded.model, "dimensions": len(embedded.data[0].embedding)}


def messages() -> object:
    import anthropic

    with anthropic.Anthropic(max_retries=0) as client:
        message = client.messages.create(
            model="claude-haiku-4-5", max_tokens=64, messages=[{"role": "user", "content": QUESTION}]
        )
    return {"model": message.model, "text": "".join(b.text for b in message.content if b.type == "text")}


CALLS = {"chat": chat, "parse": parse, "responses": responses, "embeddings": embeddings, "messages": messages}
print(json.dumps({name: CALLS[name]() for name in sys.argv[1:]}))
