"""An app that uses the openai client unchanged; `opentelemetry-instrument python client_app.py` traces it.

It reads OPENAI_BASE_URL and OPENAI_API_KEY as any openai app does, asks once
plainly and once streamed, and prints what came back as one JSON line.
"""

import json

import openai

client = openai.OpenAI(max_retries=0)
messages = [{"role": "user", "content": "Where is my parcel?"}]

completion = client.chat.completions.create(model="auto", messages=messages)
streamed = "".join(
    chunk.choices[0].delta.content or ""
    for chunk in client.chat.completions.create(model="auto", messages=messages, stream=True)
    if chunk.choices
)
print(json.dumps({"model": completion.model, "text": completion.choices[0].message.content, "streamed": streamed}))
