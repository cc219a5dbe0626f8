// Passkeys (WebAuthn): runs the browser ceremony and submits its answer in the form's hidden "credential"
// field. The options come from the server in the form's data-options attribute (JSON, base64url binaries).
(function () {
  "use strict";

  function toBuffer(base64url) {
    var base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) { base64 += "="; }
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) { bytes[i] = binary.charCodeAt(i); }
    return bytes.buffer;
  }

  function toBase64url(buffer) {
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) { binary += String.fromCharCode(bytes[i]); }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (d) { return Object.assign({}, d, { id: toBuffer(d.id) }); });
  }

  function creationOptions(options) {
    options.challenge = toBuffer(options.challenge);
    options.user.id = toBuffer(options.user.id);
    options.excludeCredentials = descriptors(options.excludeCredentials);
    return options;
  }

  function requestOptions(options) {
    options.challenge = toBuffer(options.challenge);
    options.allowCredentials = descriptors(options.allowCredentials);
    return options;
  }

  function common(credential) {
    return {
      id: credential.id,
      rawId: toBase64url(credential.rawId),
      type: credential.type,
      authenticatorAttachment: credential.authenticatorAttachment || undefined,
      clientExtensionResults: credential.getClientExtensionResults ? credential.getClientExtensionResults() : {},
    };
  }

  function registrationJSON(credential) {
    var answer = common(credential);
    answer.response = {
      clientDataJSON: toBase64url(credential.response.clientDataJSON),
      attestationObject: toBase64url(credential.response.attestationObject),
      transports: credential.response.getTransports ? credential.response.getTransports() : [],
    };
    return JSON.stringify(answer);
  }

  function assertionJSON(credential) {
    var answer = common(credential);
    var r = credential.response;
    answer.response = {
      clientDataJSON: toBase64url(r.clientDataJSON),
      authenticatorData: toBase64url(r.authenticatorData),
      signature: toBase64url(r.signature),
      userHandle: r.userHandle ? toBase64url(r.userHandle) : undefined,
    };
    return JSON.stringify(answer);
  }

  function showError(form, message) {
    var box = form.querySelector(".passkey-unsupported");
    if (box) {
      box.textContent = message;
      box.hidden = false;
    }
  }

  function wire(form, ceremony, serialize) {
    form.addEventListener("submit", function (event) {
      var field = form.querySelector("input[name=credential]");
      if (field.value) { return; }  // the answer is in: let the form go
      event.preventDefault();
      if (!window.PublicKeyCredential || !navigator.credentials) {
        showError(form, "This browser cannot use passkeys.");
        return;
      }
      var options = JSON.parse(form.getAttribute("data-options"));
      ceremony(options).then(function (credential) {
        field.value = serialize(credential);
        form.submit();
      }).catch(function (error) {
        showError(form, "The passkey was not used (" + (error && error.name ? error.name : "cancelled") + "). Try again.");
      });
    });
  }

  document.querySelectorAll("form[data-passkey-create]").forEach(function (form) {
    wire(form, function (options) {
      return navigator.credentials.create({ publicKey: creationOptions(options) });
    }, registrationJSON);
  });
  document.querySelectorAll("form[data-passkey-get]").forEach(function (form) {
    wire(form, function (options) {
      return navigator.credentials.get({ publicKey: requestOptions(options) });
    }, assertionJSON);
  });
})();
