// convserve web page: a drawing pad and an upload control that ask POST /predict?explain=1,
// and show the answer. Plain JavaScript, no build step, no third-party code.
"use strict";

(function () {
  const PAD_BACKGROUND = "#000";
  const PAD_INK = "#fff";
  // MNIST strokes are about 2.5 px wide in a 20 px digit box; on the 280 px pad, a digit
  // drawn across most of the pad gets the same proportions with a 22 px pen.
  const PEN_WIDTH = 22;

  const $ = (id) => document.getElementById(id);
  const pad = $("pad");
  const context = pad.getContext("2d");
  const predictButton = $("predict");
  const clearButton = $("clear");
  const upload = $("upload");
  const camera = $("camera");
  const versionSelect = $("version");
  const versionHint = $("version-hint");
  const errorBox = $("error");
  const statusBox = $("status");
  const resultSection = $("result");

  let hasInk = false;
  let lastPoint = null;
  let activePointer = null;

  // ------------------------------------------------------------------ drawing
  function clearPad() {
    context.fillStyle = PAD_BACKGROUND;
    context.fillRect(0, 0, pad.width, pad.height);
    hasInk = false;
    lastPoint = null;
  }

  // Pointer position in canvas pixels (the pad is scaled by CSS on narrow screens).
  function padPoint(event) {
    const box = pad.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * pad.width) / box.width,
      y: ((event.clientY - box.top) * pad.height) / box.height,
    };
  }

  function strokeTo(point) {
    context.strokeStyle = PAD_INK;
    context.fillStyle = PAD_INK;
    context.lineWidth = PEN_WIDTH;
    context.lineCap = "round";
    context.lineJoin = "round";
    if (lastPoint === null) {
      context.beginPath();
      context.arc(point.x, point.y, PEN_WIDTH / 2, 0, 2 * Math.PI);
      context.fill();
    } else {
      context.beginPath();
      context.moveTo(lastPoint.x, lastPoint.y);
      context.lineTo(point.x, point.y);
      context.stroke();
    }
    lastPoint = point;
    hasInk = true;
  }

  pad.addEventListener("pointerdown", (event) => {
    if (activePointer !== null || (event.pointerType === "mouse" && event.button !== 0)) {
      return;
    }
    event.preventDefault();
    activePointer = event.pointerId;
    pad.setPointerCapture(event.pointerId);
    lastPoint = null;
    strokeTo(padPoint(event));
  });

  pad.addEventListener("pointermove", (event) => {
    if (event.pointerId !== activePointer) {
      return;
    }
    event.preventDefault();
    // Coalesced events keep fast strokes smooth where the browser batches them.
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const each of events.length ? events : [event]) {
      strokeTo(padPoint(each));
    }
  });

  function endStroke(event) {
    if (event.pointerId === activePointer) {
      activePointer = null;
      lastPoint = null;
    }
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  // ------------------------------------------------------------------ talking to the API
  function predictUrl() {
    const params = new URLSearchParams({ explain: "1" });
    const choice = versionSelect.value;
    if (choice.startsWith("version:")) {
      params.set("version", choice.slice("version:".length));
    }
    return "predict?" + params.toString();
  }

  // The API answers errors as {"error": {"code", "message"}}; anything else (a proxy's HTML
  // page, a dropped connection) still gets a sentence a person can read.
  async function errorMessage(response, blob) {
    let message = "";
    try {
      const body = await response.json();
      if (body && body.error) {
        message = typeof body.error === "string" ? body.error : body.error.message || "";
      }
    } catch (_) {
      // not JSON: fall through to the status line
    }
    if (response.status === 413) {
      const size = blob ? " (" + formatSize(blob.size) + ")" : "";
      return "That file" + size + " is too large for the server. " +
        (message || "Try a smaller image.");
    }
    if (!message) {
      message = "the server answered " + response.status + " " + response.statusText + ".";
    }
    return "The server could not classify that: " + message;
  }

  function formatSize(bytes) {
    if (bytes >= 1e6) {
      return (bytes / 1e6).toFixed(1) + " MB";
    }
    return Math.max(1, Math.round(bytes / 1e3)) + " kB";
  }

  // The last image sent, so a change of version can ask again about the same image.
  let lastInput = null;
  // The request in flight: a newer one (another drawing, file or version) replaces it.
  let inflight = null;

  async function send(blob, filename) {
    lastInput = { blob, filename };
    if (inflight) {
      inflight.abort();
    }
    const controller = new AbortController();
    inflight = controller;
    setBusy(true);
    showError("");
    try {
      const form = new FormData();
      form.append("image", blob, filename);
      const response = await fetch(predictUrl(), {
        method: "POST",
        body: form,
        signal: controller.signal,
      });
      if (!response.ok) {
        const message = await errorMessage(response, blob);
        if (controller === inflight) {
          showError(message);
        }
        return;
      }
      const answer = await response.json();
      if (controller === inflight) {
        await showAnswer(answer);
      }
    } catch (error) {
      if (error.name !== "AbortError" && controller === inflight) {
        showError("Could not reach the server. Check the connection and try again.");
      }
    } finally {
      if (controller === inflight) {
        inflight = null;
        // A counter of finished requests (answered or refused): lets a script wait for one.
        resultSection.dataset.finished = String(Number(resultSection.dataset.finished || 0) + 1);
        setBusy(false);
      }
    }
  }

  // Not `disabled`: that would drop the keyboard focus from the button just pressed.
  function setBusy(value) {
    resultSection.setAttribute("aria-busy", String(value));
    predictButton.textContent = value ? "Predicting..." : "Predict";
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = message === "";
    if (message) {
      statusBox.textContent = "";
      revealResult();
    }
  }

  // ------------------------------------------------------------------ the answer
  function percent(value) {
    return (100 * value).toFixed(1) + "%";
  }

  async function showAnswer(document_) {
    const prediction = document_.predictions[0];
    const model = document_.model;
    const labels = await classLabelsOf(model, prediction.probabilities.length);
    $("placeholder").hidden = true;
    $("answer").hidden = false;
    const verdict = showVerdict(prediction);
    const answeredBy = $("answered-by");
    answeredBy.textContent = "Answered by " + model.name + " version " + model.version + ".";
    answeredBy.dataset.version = String(model.version);
    const seen = $("seen");
    if (prediction.input_png) {
      seen.src = prediction.input_png;
      seen.alt = "The 28 by 28 pixel image the model saw, white ink on black";
    }
    drawBars(prediction.probabilities, prediction.label, labels);
    statusBox.textContent =
      verdict + " Answered by " + model.name + " version " + model.version + ".";
    revealResult();
  }

  // A flagged image gets no confident label, only the plain message and the best guess; a
  // version without a detector (not_a_digit null) answers with a label as it always has.
  // Returns the verdict as one sentence for screen readers.
  function showVerdict(prediction) {
    const flagged = prediction.not_a_digit === true;
    const unavailable = prediction.not_a_digit === null || prediction.not_a_digit === undefined;
    $("digit-verdict").hidden = flagged;
    $("not-digit").hidden = !flagged;
    $("ood-note").hidden = !unavailable;
    $("result").dataset.verdict = flagged ? "not-a-digit" : "digit";
    const guess = String(prediction.label);
    const confidence = percent(prediction.confidence);
    if (flagged) {
      $("ood-score").textContent = Number(prediction.ood_score).toFixed(2);
      $("best-guess").textContent = guess;
      $("best-guess-confidence").textContent = confidence;
      return "This doesn't look like a digit (best guess " + guess + ", " + confidence + ").";
    }
    $("label").textContent = guess;
    $("confidence").textContent = confidence;
    return "Predicted " + guess + ", " + confidence + " confident.";
  }

  // On a phone the answer sits below the controls: bring it into view unless it already is.
  function revealResult() {
    const box = resultSection.getBoundingClientRect();
    if (box.top < 0 || box.top > window.innerHeight - 80) {
      const still = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
      resultSection.scrollIntoView({ behavior: still ? "auto" : "smooth", block: "start" });
    }
  }

  function drawBars(probabilities, predicted, labels) {
    const list = $("bars");
    list.replaceChildren();
    probabilities.forEach((probability, index) => {
      const item = document.createElement("li");
      item.className = "bar-row";
      if (String(labels[index]) === String(predicted)) {
        item.classList.add("top");
      }
      const name = document.createElement("span");
      name.className = "bar-label";
      name.textContent = String(labels[index]);
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = Math.max(0, Math.min(100, 100 * probability)).toFixed(2) + "%";
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "bar-value";
      value.textContent = percent(probability);
      item.append(name, track, value);
      list.appendChild(item);
    });
  }

  // The class label of each probability, from the answering version's manifest (a model
  // trained on digits 3 and 8 has two outputs labelled 3 and 8). Cached per version.
  const labelCache = new Map();
  async function classLabelsOf(model, count) {
    const key = model.name + ":" + model.version;
    if (!labelCache.has(key)) {
      let labels = null;
      try {
        const url =
          "models/" + encodeURIComponent(model.name) + "/versions/" + model.version;
        const response = await fetch(url, { headers: { Accept: "application/json" } });
        if (response.ok) {
          labels = ((await response.json()).manifest || {}).class_labels || null;
        }
      } catch (_) {
        // fall back to the output indices below
      }
      labelCache.set(key, labels);
    }
    const labels = labelCache.get(key);
    if (Array.isArray(labels) && labels.length === count) {
      return labels;
    }
    return Array.from({ length: count }, (_, index) => index);
  }

  // ------------------------------------------------------------------ versions
  async function loadVersions() {
    let listing;
    try {
      const response = await fetch("models", { headers: { Accept: "application/json" } });
      if (!response.ok) {
        throw new Error(await errorMessage(response));
      }
      listing = await response.json();
    } catch (error) {
      versionHint.textContent = "Could not list the versions (" + error.message + ").";
      return;
    }
    const serving = listing.serving || {};
    const model = (listing.models || []).find((each) => each.name === serving.name);
    if (!model) {
      versionHint.textContent = "The store holds no model named " + serving.name + ".";
      return;
    }
    const aliasesOf = {};
    for (const [alias, version] of Object.entries(model.aliases || {})) {
      (aliasesOf[version] = aliasesOf[version] || []).push(alias);
    }
    const served = model.served_version;
    const first = versionSelect.options[0];
    first.textContent =
      served === null || served === undefined
        ? "Served version (none loaded yet)"
        : "Served: version " + served + " (" + serving.alias + ")";
    const versions = (model.versions || []).slice().sort((a, b) => b - a);
    for (const version of versions) {
      const option = document.createElement("option");
      option.value = "version:" + version;
      const tags = (aliasesOf[version] || []).sort();
      if (version === served) {
        tags.unshift("served");
      }
      option.textContent =
        "Version " + version + (tags.length ? " (" + tags.join(", ") + ")" : "");
      versionSelect.appendChild(option);
    }
    versionHint.textContent =
      model.name + ": " + versions.length + " version" + (versions.length === 1 ? "" : "s") +
      " in the store. Predictions say which version answered.";
  }

  // ------------------------------------------------------------------ controls
  predictButton.addEventListener("click", () => {
    if (!hasInk) {
      showError("The pad is empty: draw a digit first, or upload an image.");
      return;
    }
    pad.toBlob((blob) => {
      if (blob) {
        send(blob, "drawing.png");
      } else {
        showError("This browser could not turn the drawing into an image.");
      }
    }, "image/png");
  });

  // Comparing versions: the same image again, answered by the newly chosen version.
  versionSelect.addEventListener("change", () => {
    if (lastInput) {
      send(lastInput.blob, lastInput.filename);
    }
  });

  clearButton.addEventListener("click", () => {
    clearPad();
    lastInput = null;
    showError("");
  });

  for (const input of [upload, camera]) {
    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      if (file) {
        send(file, file.name || "upload");
        // Picking the same file again should ask again.
        input.value = "";
      }
    });
  }

  clearPad();
  loadVersions();
})();
