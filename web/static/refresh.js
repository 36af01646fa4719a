// A page about a job that is still going reloads itself, keeping the scroll position.
"use strict";
setTimeout(() => location.reload(), 3000);
