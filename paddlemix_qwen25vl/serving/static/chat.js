// The chat page: sends the conversation to /v1/chat/completions with stream=true and reads the
// server-sent events with fetch's stream reader. Images are attached as data URLs. With --api_key
// the browser asked for the key when it opened the page (HTTP Basic) and sends it with these calls.
// The calls name location.origin: a page opened as http://user:key@host/ would resolve relative URLs
// with those credentials in them, which fetch refuses.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];      // OpenAI messages of the conversation so far
let attached = [];       // data URLs waiting to be sent with the next question
let model = null;


async function errorText(response) {
  try { return (await response.json()).error.message; } catch (e) { return response.status + " " + response.statusText; }
}

async function connect() {
  const response = await fetch(location.origin + "/v1/models");
  if (!response.ok) { $("status").textContent = await errorText(response); return; }
  model = (await response.json()).data[0].id;
  $("status").textContent = "model: " + model;
}

function bubble(role, text, images) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  for (const url of images || []) {
    const img = document.createElement("img");
    img.src = url;
    div.appendChild(img);
  }
  div.appendChild(document.createTextNode(text));
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function showThumbs() {
  $("thumbs").replaceChildren(...attached.map((url, i) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = url;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "remove";
    remove.onclick = () => { attached.splice(i, 1); showThumbs(); };
    figure.append(img, remove);
    return figure;
  }));
}

function attach(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    const reader = new FileReader();
    reader.onload = () => { attached.push(reader.result); showThumbs(); };
    reader.readAsDataURL(file);
  }
}

// Yields the parsed JSON of each "data:" event until [DONE].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(question) {
  const images = attached;
  attached = [];
  showThumbs();
  const content = images.map((url) => ({ type: "image_url", image_url: { url } }));
  content.push({ type: "text", text: question });
  history.push({ role: "user", content });
  bubble("user", question, images);
  const answer = bubble("assistant", "");
  answer.dataset.done = "false";
  let text = "";
  try {
    const response = await fetch(location.origin + "/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model, messages: history, stream: true, temperature: 0 }),
    });
    if (!response.ok) throw new Error(await errorText(response));
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
      if (delta) { text += delta; answer.textContent = text; }
    }
    history.push({ role: "assistant", content: text });
  } catch (err) {
    history.pop();  // the question was not answered: leave it out of the conversation
    answer.className = "msg error";
    answer.textContent = text + (text ? "\n" : "") + "Error: " + err.message;
  }
  answer.dataset.done = "true";
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  if (!model) await connect();
  if (!model) return;
  $("question").value = "";
  $("send").disabled = true;
  try { await send(question); } finally { $("send").disabled = false; $("question").focus(); }
});
$("question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
});
$("file").addEventListener("change", (event) => { attach(event.target.files); event.target.value = ""; });
const form = $("composer");
form.addEventListener("dragover", (event) => { event.preventDefault(); form.classList.add("dragover"); });
form.addEventListener("dragleave", () => form.classList.remove("dragover"));
form.addEventListener("drop", (event) => {
  event.preventDefault();
  form.classList.remove("dragover");
  attach(event.dataTransfer.files);
});
connect();
