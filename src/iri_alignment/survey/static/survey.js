// The human study page (protocol 10): consent, instructions, practice with feedback, then the
// session's list of 2AFC and clustering trials in a seeded order; every answer is saved as it is
// given, and the end (completion page or Prolific redirect) comes only after every row is stored.
//
// Hosts: our server (`iri survey serve`: /api/session, /api/response, /api/complete) or JATOS
// (jatos.js: appendResultData per trial, endStudy at the end). Nothing here knows the answers of
// main or catch trials; only practice trials carry theirs, for the feedback.
(async function () {
  "use strict";
  const url = new URLSearchParams(window.location.search);
  const getJSON = async (path) => {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  };
  const config = await getJSON("config.json");
  const trials = await getJSON("trials.json");
  const texts = config.texts;
  const inJatos = typeof window.jatos !== "undefined";

  // -- the session: which list, which seed ---------------------------------------------------------
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function post(path, body, tries = 6) {
    let wait = 250;
    for (let i = 0; ; i++) {
      try {
        const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" },
                                      body: JSON.stringify(body) });
        if (r.ok || (r.status >= 400 && r.status < 500 && r.status !== 409 && r.status !== 429)) {
          return { status: r.status, body: await r.json().catch(() => ({})) };
        }
        if (i >= tries) return { status: r.status, body: await r.json().catch(() => ({})) };
      } catch (err) {
        if (i >= tries) throw err;
      }
      await sleep(wait);
      wait = Math.min(4000, wait * 2);
    }
  }

  let session;
  if (inJatos) {
    await new Promise((resolve) => window.jatos.onLoad(resolve));
    const lists = config.lists;
    const list = lists[window.jatos.studyResultId % lists.length];  // rotation: JATOS has no least-filled count
    session = { session_id: `jatos-${window.jatos.studyResultId}`, list_id: list.id, trials: list.trials,
                seed: String(window.jatos.studyResultId) };
  } else {
    const r = await post("api/session", {
      prolific_pid: url.get("PROLIFIC_PID"), study_id: url.get("STUDY_ID"), prolific_session_id: url.get("SESSION_ID"),
      user_agent: navigator.userAgent, viewport: [window.innerWidth, window.innerHeight], study_hash: config.study_hash,
    });
    if (r.status !== 200) {
      document.body.innerHTML = `<p class="iri-text">The study cannot start: ${r.body.error || r.status}.</p>`;
      return;
    }
    session = r.body;
  }

  // -- saving: one row per answer, retried; the end waits for all of them ---------------------------
  const rows = new Map();
  const pending = new Set();
  const jatosLine = (row) => JSON.stringify({ ...row, session_id: session.session_id, list_id: session.list_id,
                                              prolific_pid: url.get("PROLIFIC_PID") }) + "\n";
  function save(row) {
    rows.set(row.trial, row);
    const p = inJatos
      ? window.jatos.appendResultData(jatosLine(row))
      : post("api/response", { session_id: session.session_id, token: session.token, ...row });
    pending.add(p);
    p.finally(() => pending.delete(p));
    return p;
  }
  async function finish() {
    await Promise.allSettled([...pending]);
    if (inJatos) {  // the end also submits every row once more, whole: the result data equal the appended lines
      const all = [...rows.values()].map(jatosLine).join("");
      window.__done = true;
      if (config.completion_url) window.jatos.endStudyAndRedirect(config.completion_url, all);
      else window.jatos.endStudy(all, true, texts.end);
      return;
    }
    for (let attempt = 0; attempt < 5; attempt++) {
      const r = await post("api/complete", { session_id: session.session_id, token: session.token });
      if (r.status === 200) {
        window.__done = true;
        const target = r.body.redirect;
        document.body.innerHTML = `<p class="iri-text iri-end">${texts.end}</p>`;
        if (target) window.location.assign(target);
        return;
      }
      if (r.status === 409 && Array.isArray(r.body.missing)) {  // resend what the server lacks
        await Promise.allSettled(r.body.missing.filter((t) => rows.has(t)).map((t) => save(rows.get(t))));
      } else {
        await sleep(1000);
      }
    }
    document.body.innerHTML = '<p class="iri-text">Your answers could not all be saved. Please keep this page open ' +
      "and contact the researchers.</p>";
  }

  // -- the timeline ---------------------------------------------------------------------------------
  const jsPsych = initJsPsych({ show_progress_bar: true, auto_update_progress_bar: true, on_finish: finish });
  jsPsych.randomization.setSeed(String(session.seed));
  const main = jsPsych.randomization.shuffle(session.trials.slice());
  const practice = config.practice;
  const images = new Set();
  for (const id of [...practice, ...main]) {
    images.add(trials[id].query);
    trials[id].choices.forEach((c) => images.add(c));
  }

  function trialScreen(id, index, total, isPractice) {
    const t = trials[id];
    const prompt = t.task === "2afc" ? texts.prompt_2afc : texts.prompt_clustering;
    const label = isPractice ? `Practice ${index}/${total}` : `Query image ${index}/${total}`;
    return {
      type: jsPsychHtmlButtonResponse,
      stimulus: `<p class="iri-prompt">${prompt}</p><img class="iri-query" src="${t.query}" alt="query image">` +
                `<p class="iri-label">${label}</p>`,
      choices: t.choices,
      button_html: (choice) => `<button class="jspsych-btn iri-choice"><img src="${choice}" alt="choice"></button>`,
      enable_button_after: config.enable_after_ms,
      data: { trial_id: id, task: t.task, practice: isPractice },
      on_finish: (data) => {
        save({ trial: id, response: data.response, rt: Math.round(data.rt), choices: t.choices,
               time_elapsed: data.time_elapsed });
        if (isPractice) data.correct = data.response === t.answer;
      },
    };
  }

  const timeline = [
    { type: jsPsychPreload, images: [...images], max_load_time: 60000 },
    { type: jsPsychHtmlButtonResponse, stimulus: `<h2>${texts.title}</h2><p class="iri-text">${texts.consent}</p>`,
      choices: ["I agree"], data: { screen: "consent" } },
    { type: jsPsychInstructions, pages: [`<p class="iri-text">${texts.instructions}</p>`], show_clickable_nav: true,
      allow_backward: false },
  ];
  practice.forEach((id, i) => {
    timeline.push(trialScreen(id, i + 1, practice.length, true));
    timeline.push({
      type: jsPsychHtmlButtonResponse, choices: ["Continue"],
      stimulus: () => {
        const last = jsPsych.data.get().last(1).values()[0];
        return last.correct ? '<p class="iri-feedback">Correct: that is the same image.</p>'
          : '<p class="iri-feedback">Not quite: one of the images is the query image itself.</p>';
      },
    });
  });
  if (practice.length) {
    timeline.push({ type: jsPsychHtmlButtonResponse, stimulus: `<p class="iri-text">${texts.practice_done}</p>`,
                    choices: ["Start"] });
  }
  main.forEach((id, i) => timeline.push(trialScreen(id, i + 1, main.length, false)));
  await jsPsych.run(timeline);
})();
