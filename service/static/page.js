// Shared by the explanation viewer and the model overview page: building DOM nodes without markup
// strings, and the read-token form. Loaded before each page's own script (both deferred, in order).
"use strict";

window.VaiPage = (() => {
  const TOKEN_KEY = "vai-ui-token"; // one key, so a token remembered on one page serves the other

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
   * Wire the page's #token-form (#token, #remember): a token remembered for this tab is restored, and
   * ``onToken(token)`` runs with the token in use whenever the form is submitted. Returns the restored token.
   */
  function tokenForm(onToken) {
    const input = document.getElementById("token");
    const remember = document.getElementById("remember");
    const saved = window.sessionStorage.getItem(TOKEN_KEY) || "";
    if (saved) {
      input.value = saved;
      remember.checked = true;
    }
    remember.addEventListener("change", () => {
      if (!remember.checked) window.sessionStorage.removeItem(TOKEN_KEY);
    });
    document.getElementById("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (remember.checked && token) window.sessionStorage.setItem(TOKEN_KEY, token);
      else window.sessionStorage.removeItem(TOKEN_KEY);
      onToken(token);
    });
    return saved;
  }

  return Object.freeze({ el, tokenForm });
})();
