// k6 script for perf-agent's phase tests: one ramping scenario (ramp-up,
// steady, ramp-down) and one short constant scenario starting mid-run.
import http from 'k6/http';

const target = __ENV.TARGET_URL;

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-vus',
      startVUs: 1,
      stages: [
        { duration: '1s', target: 3 },
        { duration: '2s', target: 3 },
        { duration: '1s', target: 1 },
      ],
      gracefulRampDown: '5s',
    },
    burst: { executor: 'constant-vus', vus: 1, duration: '1s', startTime: '1500ms' },
  },
};

export default function () {
  http.get(target);
}
