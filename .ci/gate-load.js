// Load of the release-gate example (.ci/gate, docs/ci.md): a fixed arrival
// rate, so throughput is set by the client and latency by the server's
// service time (demo-server --delay-ms), on any machine that keeps up.
import http from 'k6/http';
import { check } from 'k6';

const target = __ENV.TARGET_URL || 'http://127.0.0.1:8080/';

export const options = {
  scenarios: {
    gate: {
      executor: 'constant-arrival-rate',
      rate: 100,
      timeUnit: '1s',
      duration: '5s',
      preAllocatedVUs: 4,
      maxVUs: 20,
    },
  },
};

export default function () {
  const res = http.get(target);
  check(res, { 'status is 200': (r) => r.status === 200 });
}
