// Every page's script: a button with data-confirm asks before its form is sent. Without
// JavaScript the form is sent as it is (the pages read and act without scripts).
document.addEventListener("submit", function (e) {
  var asked = e.submitter && e.submitter.dataset.confirm;
  if (asked && !window.confirm(asked)) e.preventDefault();
});
