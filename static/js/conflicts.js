// Keyboard triage on the conflict list and the conflict page (a static file: the
// Content-Security-Policy allows only scripts from this site). Everything it does is also a link,
// a radio button or a form button, so the pages work without it.
//   j / k    next / previous conflict (on the list: move between rows)
//   1 2 3    the focused field takes the graph (left) / the other side (right) / the proposal
//   e        edit the focused field;  n  write the note
//   Enter    resolve (needs the note);  ?  show the keys;  Esc  hide them
(function () {
  "use strict";

  function typing(target) {
    if (!target || !target.tagName) return false;
    var tag = target.tagName.toLowerCase();
    if (tag === "textarea" || tag === "select" || target.isContentEditable) return true;
    return tag === "input" && !/^(radio|checkbox|button|submit)$/.test(target.type);
  }

  function toggleKeys(show) {
    var keys = document.getElementById("keys");
    if (!keys) return;
    keys.hidden = show === undefined ? !keys.hidden : !show;
    if (!keys.hidden) keys.focus();
  }

  // -- the conflict page ------------------------------------------------------------------------
  var form = document.getElementById("resolve-form");
  var rows = Array.prototype.slice.call(document.querySelectorAll("#fields tr.field"));
  var focused = null;

  function focusRow(row) {
    if (!row) return;
    rows.forEach(function (r) { r.classList.toggle("focused", r === row); });
    focused = row;
  }

  function currentRow() {
    var active = document.activeElement;
    var within = active && active.closest ? active.closest("#fields tr.field") : null;
    return within || focused || rows[0] || null;
  }

  function choose(row, side) {
    if (!row) return;
    var radio = row.querySelector('input[type="radio"][value="' + side + '"]');
    if (!radio) return;
    radio.checked = true;
    radio.focus();
    focusRow(row);
    if (side === "edit") {
      var input = row.querySelector('input[type="text"]');
      if (input) { input.focus(); input.select(); }
    }
    preview();
  }

  function textOf(json) {
    var value = JSON.parse(json || "null");
    return value === null ? "—" : Array.isArray(value) ? value.join(", ") : String(value);
  }

  function chosen(row) {
    var radio = row.querySelector('input[type="radio"]:checked');
    var side = radio ? radio.value : "left";
    if (side === "edit") {
      var input = row.querySelector('input[type="text"]');
      return {text: input ? input.value : "", json: null};
    }
    var json = row.getAttribute("data-" + side) || "null";
    return {text: textOf(json), json: json};
  }

  // The preview follows the choices as they are made; the server's preview (the Preview button)
  // and the resolution itself remain the authority.
  function preview() {
    var effect = document.getElementById("effect");
    var changed = false, embedded = false;
    rows.forEach(function (row) {
      var value = chosen(row);
      var cell = document.querySelector('[data-preview="' + CSS.escape(row.getAttribute("data-field")) + '"]');
      if (cell) cell.textContent = value.text;
      var left = row.getAttribute("data-left");
      var differs = value.json === null ? value.text.trim() !== textOf(left) : value.json !== left;
      if (differs) {
        changed = true;
        if (row.hasAttribute("data-embedded")) embedded = true;
      }
    });
    if (effect) {
      effect.textContent = effect.getAttribute(embedded ? "data-effect-reembed" : changed ? "data-effect-metadata" : "data-effect-none");
    }
  }

  function resolve() {
    var note = document.getElementById("note");
    if (!form || !note) return;
    if (!note.value.trim()) {
      note.focus();
      note.setCustomValidity("A note is required: say why, for the audit trail.");
      note.reportValidity();
      return;
    }
    note.setCustomValidity("");
    form.requestSubmit(document.getElementById("resolve"));
  }

  function go(id) {
    var link = document.getElementById(id);
    if (link) window.location.href = link.href;
  }

  if (form) {
    rows.forEach(function (row) {
      row.addEventListener("focusin", function () { focusRow(row); });
      row.addEventListener("click", function () { focusRow(row); });
    });
    form.addEventListener("change", preview);
    form.addEventListener("input", function (event) {
      if (event.target.id === "note") event.target.setCustomValidity("");
      if (event.target.name && event.target.name.indexOf("edit-") === 0) {
        var row = event.target.closest("tr.field");
        var radio = row && row.querySelector('input[type="radio"][value="edit"]');
        if (radio) radio.checked = true;
        preview();
      }
    });
    focusRow(rows[0]);
  }

  // -- the list ---------------------------------------------------------------------------------
  var listLinks = Array.prototype.slice.call(document.querySelectorAll("[data-keyboard-list] tbody tr a"));

  function moveInList(step) {
    if (!listLinks.length) return;
    var index = listLinks.indexOf(document.activeElement);
    var next = index < 0 ? 0 : Math.max(0, Math.min(listLinks.length - 1, index + step));
    listLinks[next].focus();
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    if (event.key === "Escape") { toggleKeys(false); return; }
    if (typing(target)) {
      if (event.key === "Enter" && target.id === "note" && !event.shiftKey) { event.preventDefault(); resolve(); }
      return;
    }
    var key = event.key;
    if (key === "?") { event.preventDefault(); toggleKeys(); return; }
    if (!form) {
      if (key === "j") { event.preventDefault(); moveInList(1); }
      if (key === "k") { event.preventDefault(); moveInList(-1); }
      return;
    }
    if (key === "j") { event.preventDefault(); go("next-conflict"); }
    else if (key === "k") { event.preventDefault(); go("previous-conflict"); }
    else if (key === "1") { event.preventDefault(); choose(currentRow(), "left"); }
    else if (key === "2") { event.preventDefault(); choose(currentRow(), "right"); }
    else if (key === "3") { event.preventDefault(); choose(currentRow(), "proposal"); }
    else if (key === "e") { event.preventDefault(); choose(currentRow(), "edit"); }
    else if (key === "n") { event.preventDefault(); var note = document.getElementById("note"); if (note) note.focus(); }
    else if (key === "Enter" && !(target.tagName && /^(a|button)$/i.test(target.tagName))) { event.preventDefault(); resolve(); }
  });

  document.addEventListener("click", function (event) {
    var toggle = event.target.closest ? event.target.closest("[data-keys-toggle]") : null;
    if (toggle) toggleKeys();
  });
})();
