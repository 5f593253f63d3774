// Load for `cargo xtask demo`: ramps to 10 virtual users, holds, ramps down.
// The target comes from TARGET_URL (set by xtask to the demo server's address).
import http from 'k6/http';
import { check } from 'k6';

const target = __ENV.TARGET_URL || 'http://127.0.0.1:8080/';

export const options = {
  scenarios: {
    demo: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: '2s', target: 10 }, // ramp-up
        { duration: '5s', target: 10 }, // steady
        { duration: '2s', target: 0 }, // ramp-down
      ],
    },
  },
};

export default function () {
  const res = http.get(target);
  check(res, { 'status is 200': (r) => r.status === 200 });
}
