// Shared by the explanation viewer and the model overview page: building DOM nodes without markup
// strings, and the read-token form. Loaded before each page's own script (both deferred, in order).
"use strict";

window.VaiPage = (() => {
  const TOKEN_KEY = "vai-ui-token"; // one key, so a token remembered on one page serves the other
  const FORGET_KEY = "vai-ui-token-forget"; // "1" once "remember for this tab" was unticked in this tab

  /** An element with attributes (``on*`` as listeners, ``class``) and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  /**
   * Wire the page's #token-form (#token, #remember): the token in use is kept in this tab's sessionStorage unless
   * "remember for this tab" is unticked, so it follows the links between the viewer and the overview pages (never
   * in an address: no URL, history entry or Referer carries it). ``onToken(token)`` runs with the token in use
   * whenever the form is submitted. Returns the restored token.
   */
  function tokenForm(onToken) {
    const input = document.getElementById("token");
    const remember = document.getElementById("remember");
    const store = window.sessionStorage;
    const saved = store.getItem(TOKEN_KEY) || "";
    let inUse = saved;
    input.value = saved;
    remember.checked = store.getItem(FORGET_KEY) !== "1"; // unticked once in this tab: stays so on both pages
    remember.addEventListener("change", () => {
      if (remember.checked) {
        store.removeItem(FORGET_KEY);
        if (inUse) store.setItem(TOKEN_KEY, inUse);
      } else {
        store.setItem(FORGET_KEY, "1");
        store.removeItem(TOKEN_KEY);
      }
    });
    document.getElementById("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      inUse = input.value.trim();
      if (remember.checked && inUse) store.setItem(TOKEN_KEY, inUse);
      else store.removeItem(TOKEN_KEY);
      onToken(inUse);
    });
    return saved;
  }

  /** What a refused read means, in the same words on both pages: ``what`` is what the token may not read. */
  function refusal(status, token, what) {
    if (status === 401) {
      return token
        ? "401 Unauthorized: the sidecar does not know this token. Check it and press “Use token”."
        : "401 Unauthorized: the sidecar needs a read token. Enter it above and press “Use token”.";
    }
    return `403 Forbidden: this token may not read ${what}; use a read or admin token.`;
  }

  return Object.freeze({ el, tokenForm, refusal });
})();
