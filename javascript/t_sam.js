// Hover hints for the T-SAM accordion (A1111 convention: tooltips are element titles set from javascript, which
// gradio 3 cannot do). The texts are not repeated here: lib_align/ui.py renders them, from AlignConfig's field
// table, as JSON in a hidden element with class "tsam-hints", keyed by element id.
(function() {
    function applyTsamHints() {
        var app = gradioApp();
        app.querySelectorAll(".tsam-hints").forEach(function(holder) {
            var hints;
            try {
                hints = JSON.parse(holder.dataset.hints || "{}");
            } catch (e) {
                return;
            }
            Object.keys(hints).forEach(function(id) {
                var element = app.querySelector("#" + CSS.escape(id));
                if (!element) {
                    return;
                }
                // The block and its label text both get the title: hints.js only fills titles that are empty.
                element.title = hints[id];
                element.querySelectorAll("span, label").forEach(function(child) {
                    child.title = hints[id];
                });
            });
        });
    }

    onUiLoaded(applyTsamHints);
})();
