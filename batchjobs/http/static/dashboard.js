/* batchjobs dashboard: live updates, one submit per form, focus. Every page works without it. */
(function () {
  "use strict";

  var POLL_MS = 2000;

  function each(nodes, fn) { Array.prototype.forEach.call(nodes, fn); }

  function announce(text) {
    var region = document.getElementById("announcer");
    if (!region) { return; }
    region.textContent = "";
    window.setTimeout(function () { region.textContent = text; }, 100);
  }

  // -- forms: a double click sends one POST ---------------------------------------------
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form || (form.getAttribute("method") || "get").toLowerCase() !== "post") { return; }
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "1";
    each(form.querySelectorAll("button"), function (button) {
      button.setAttribute("aria-disabled", "true");
    });
  }, true);

  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) { return; }  // back from the next page: the forms may be used again
    each(document.querySelectorAll("form[data-sent]"), function (form) {
      delete form.dataset.sent;
      each(form.querySelectorAll("button"), function (b) { b.removeAttribute("aria-disabled"); });
    });
  });

  // -- the JSON editor says whether its text is a JSON object ---------------------------
  function checkJson(area) {
    var note = document.querySelector("[data-json-check]");
    var message = "";
    try {
      var value = JSON.parse(area.value.trim() || "{}");
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        message = "The context must be a JSON object: {…}.";
      }
    } catch (error) {
      message = "Not valid JSON yet: " + error.message;
    }
    area.setAttribute("aria-invalid", message ? "true" : "false");
    if (note) { note.textContent = message || "Valid JSON object."; }
  }

  // -- live updates ------------------------------------------------------------------------
  function Live(root) {
    this.root = root;
    this.paused = false;
    this.ended = root.hasAttribute("data-resting");
    this.source = null;
    this.timer = null;
    this.streamFailed = false;
    this.refreshing = false;
    this.refreshAgain = false;
    this.statuses = {};
    this.controls = root.querySelector("[data-live-controls]");
    this.pauseButton = root.querySelector("[data-pause]");
    var self = this;
    each(this.boxes(), function (box) { self.statuses[box.dataset.jobId] = box.dataset.status; });
  }

  Live.prototype.boxes = function (id) {
    var selector = id ? "[data-job-id=\"" + id + "\"]" : "[data-job-id]";
    var found = Array.prototype.slice.call(this.root.querySelectorAll(selector));
    if (this.root.matches(selector)) { found.unshift(this.root); }
    return found;
  };

  Live.prototype.start = function () {
    if (this.ended || this.paused) { return; }
    if (this.controls) { this.controls.hidden = false; }
    var self = this;
    var url = this.root.dataset.liveUrl;
    if (window.EventSource && url && !this.streamFailed) {
      var source = new EventSource(url);
      source.addEventListener("job", function (e) { self.apply(JSON.parse(e.data)); });
      source.addEventListener("new", function () {
        var note = self.root.querySelector("[data-new-jobs]");
        if (note) { note.hidden = false; }
      });
      source.addEventListener("end", function () { self.stop(); self.finish(); });
      source.onerror = function () {
        if (source.readyState === EventSource.CLOSED) {  // refused (e.g. too many streams): poll
          self.source = null;
          self.streamFailed = true;
          self.poll();
        }
      };
      this.source = source;
    } else {
      this.poll();
    }
  };

  Live.prototype.stop = function () {
    if (this.source) { this.source.close(); this.source = null; }
    if (this.timer) { window.clearTimeout(this.timer); this.timer = null; }
  };

  Live.prototype.finish = function () {
    this.ended = true;
    if (this.controls && !this.root.querySelector("[data-new-jobs]")) { this.controls.hidden = true; }
  };

  Live.prototype.poll = function () {
    var self = this;
    if (this.paused || this.ended) { return; }
    window.fetch(this.root.dataset.pollUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : { jobs: null }; })
      .then(function (body) {
        if (body.jobs) {
          body.jobs.forEach(function (view) { self.apply(view); });
          if (body.jobs.every(function (view) { return view.resting; })) { self.finish(); return; }
        }
        if (!self.paused) { self.timer = window.setTimeout(function () { self.poll(); }, POLL_MS); }
      })
      .catch(function () {
        if (!self.paused) { self.timer = window.setTimeout(function () { self.poll(); }, POLL_MS * 2); }
      });
  };

  Live.prototype.togglePause = function () {
    this.paused = !this.paused;
    this.pauseButton.setAttribute("aria-pressed", this.paused ? "true" : "false");
    this.pauseButton.textContent = this.paused ? "Resume updates" : "Pause updates";
    if (this.paused) { this.stop(); } else { this.start(); }
  };

  function setText(box, field, text) {
    each(box.querySelectorAll("[data-field=\"" + field + "\"]"), function (node) {
      if (node.tagName !== "PROGRESS" && node.textContent !== text) { node.textContent = text; }
    });
  }

  Live.prototype.apply = function (view) {
    var self = this;
    each(this.boxes(view.id), function (box) {
      box.dataset.status = view.status;
      setText(box, "status_label", view.status_label);
      each(box.querySelectorAll("[data-field=\"status_label\"]"), function (node) {
        node.className = "status status-" + view.status;
      });
      setText(box, "progress_text", view.progress_text);
      setText(box, "rate_text", view.rate_text);
      setText(box, "eta_text", view.eta_text);
      each(box.querySelectorAll("progress[data-field=\"progress\"]"), function (bar) {
        bar.max = view.bar_max;
        if (view.bar_value === null) { bar.removeAttribute("value"); } else { bar.value = view.bar_value; }
        if (bar.textContent !== view.progress_text) { bar.textContent = view.progress_text; }
      });
      each(box.querySelectorAll("[data-field=\"stalled\"]"), function (node) { node.hidden = !view.stalled; });
      each(box.querySelectorAll("form[data-action]"), function (form) {
        var shown = view.actions.indexOf(form.dataset.action) >= 0;
        if (form.hidden === shown && !form.contains(document.activeElement)) { form.hidden = !shown; }
      });
    });
    var before = this.statuses[view.id];
    this.statuses[view.id] = view.status;
    if (before && before !== view.status) {
      announce(view.id + " is now " + view.status_label.toLowerCase() + ".");
      this.refreshSections();
    }
  };

  // After a status change, the parts of the page that depend on it (actions, timeline,
  // stat descriptors, errors, status counts) are fetched again and swapped in place,
  // unless they hold the focus. A change heard while a fetch is on its way is fetched
  // again after it: that fetch may have read the page before the change was written.
  Live.prototype.refreshSections = function () {
    var self = this;
    var from = this.root.dataset.sectionsFrom;
    if (!from) { return; }
    if (this.refreshing) { this.refreshAgain = true; return; }
    this.refreshing = true;
    this.refreshAgain = false;
    window.fetch(from, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : ""; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new window.DOMParser().parseFromString(html, "text/html");
        each(document.querySelectorAll("[data-section]"), function (section) {
          var next = fresh.querySelector("[data-section=\"" + section.dataset.section + "\"]");
          if (next && !section.contains(document.activeElement) && section.innerHTML !== next.innerHTML) {
            section.innerHTML = next.innerHTML;
          }
          if (next) { section.hidden = next.hidden; }
        });
      })
      .catch(function () { return null; })
      .then(function () {
        self.refreshing = false;
        if (self.refreshAgain) { self.refreshSections(); }
      });
  };

  // -- the import wizard: a file may also be dropped on its zone -------------------------
  function dropZone(zone) {
    var input = zone.querySelector("input[type=file]");
    var hint = zone.querySelector("[data-drop-hint]");
    if (!input || !window.DataTransfer) { return; }
    if (hint) { hint.hidden = false; }
    function over(event) { event.preventDefault(); zone.classList.add("dragging"); }
    zone.addEventListener("dragenter", over);
    zone.addEventListener("dragover", over);
    zone.addEventListener("dragleave", function () { zone.classList.remove("dragging"); });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      zone.classList.remove("dragging");
      var files = event.dataTransfer && event.dataTransfer.files;
      if (!files || !files.length) { return; }
      var chosen = new window.DataTransfer();
      chosen.items.add(files[0]);
      input.files = chosen.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
      announce(files[0].name + " chosen.");
      input.focus();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var target = document.querySelector("[data-focus-on-load]");
    if (target) { target.focus(); }
    each(document.querySelectorAll("[data-drop]"), dropZone);
    var area = document.querySelector("textarea[data-json]");
    if (area) {
      area.addEventListener("input", function () { checkJson(area); });
    }
    each(document.querySelectorAll("[data-live]"), function (root) {
      var live = new Live(root);
      if (live.pauseButton) {
        live.pauseButton.addEventListener("click", function () { live.togglePause(); });
      }
      live.start();
      window.addEventListener("pagehide", function () { live.stop(); });
    });
  });
}());
