'use strict';
// A back end built on the OFFICIAL Azure IoT Node service SDK (azure-iothub), driven by
// tests/interop/test_node_service_sdk.py against an iot_flows hub over HTTPS.
//
// Every step prints one JSON line on stdout ({"event": "step", "step": ..., ...}); a failed
// step prints {"event": "error", "step": ..., "name", "message", "statusCode", "body"} and the
// script exits 2. Exit 0 after {"event": "done"}.
//
// Environment:
//   INTEROP_CONNECTION_STRING  service connection string (HostName=<hub>;SharedAccessKeyName=iothubowner;...)
//   INTEROP_CA_FILE            PEM file of the CA that signed the hub's certificate
//   INTEROP_HTTPS_PORT         the hub's HTTPS port (the SDK would otherwise use 443)
//   INTEROP_DEVICE_ID          id of the device to create (the script deletes it at the end)
//
// Port: the SDK always dials https://<HostName>:443 (Http.buildRequest sets no port). The
// only change made here is an https.Agent whose defaultPort is the hub's port, handed to the
// SDK's own REST client through its setOptions (the same hook its constructors use to install
// a keep-alive agent). Paths, headers, SAS tokens and bodies are the SDK's own.

const fs = require('fs');
const https = require('https');
const { Registry, JobClient } = require('azure-iothub');

const env = process.env;
const ca = fs.readFileSync(env.INTEROP_CA_FILE, 'utf8');
const port = Number(env.INTEROP_HTTPS_PORT);
const deviceId = env.INTEROP_DEVICE_ID;

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event: event }, fields || {})) + '\n');
}

function pointAtHub(sdkObject) {
  const agent = new https.Agent({ keepAlive: false, ca: ca });
  agent.defaultPort = port;
  sdkObject._restApiClient.setOptions({ http: { agent: agent }, ca: ca });
  return sdkObject;
}

async function step(name, fn) {
  try {
    const result = await fn();
    emit('step', Object.assign({ step: name }, result || {}));
    return result;
  } catch (err) {
    const response = err && err.response;
    emit('error', {
      step: name,
      name: err && err.constructor ? err.constructor.name : typeof err,
      message: err && err.message ? String(err.message) : String(err),
      statusCode: response ? response.statusCode : undefined,
      body: err && err.responseBody ? String(err.responseBody) : undefined,
    });
    process.stdout.write('', () => process.exit(2));
    throw err;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main() {
  const registry = pointAtHub(Registry.fromConnectionString(env.INTEROP_CONNECTION_STRING));
  const jobs = pointAtHub(JobClient.fromConnectionString(env.INTEROP_CONNECTION_STRING));

  await step('create', async () => {
    const res = await registry.create({ deviceId: deviceId });
    return { deviceId: res.responseBody.deviceId, status: res.responseBody.status };
  });
  await step('list', async () => {  // GET /devices/?api-version=2021-04-12 (trailing slash)
    const res = await registry.list();
    return { ids: res.responseBody.map((d) => d.deviceId), httpStatus: res.httpResponse.statusCode };
  });
  await step('get', async () => ({ deviceId: (await registry.get(deviceId)).responseBody.deviceId }));
  await step('twin-update', async () => {  // GET the twin, PATCH with If-Match: "<etag>"
    const twin = (await registry.getTwin(deviceId)).responseBody;
    const updated = (await twin.update({ tags: { site: 'interop' }, properties: { desired: { mode: 'eco' } } })).result;
    return { tags: updated.tags, desired: updated.properties.desired.mode, version: updated.properties.desired.$version };
  });
  await step('update-twin-any-etag', async () => {
    const res = await registry.updateTwin(deviceId, { tags: { row: 3 } }, '*');
    return { tags: res.responseBody.tags };
  });
  await step('query', async () => {
    const query = registry.createQuery(`SELECT * FROM devices WHERE deviceId = '${deviceId}'`, 10);
    const page = await query.nextAsTwin();
    return { ids: page.result.map((t) => t.deviceId), hasMoreResults: query.hasMoreResults };
  });

  const later = 'later-' + deviceId.replace(/[^A-Za-z0-9-]/g, '-').slice(0, 40);
  await step('schedule-later', async () => {  // startTime one hour ahead
    const res = await jobs.scheduleTwinUpdate(later, `deviceId = '${deviceId}'`,
      { etag: '*', properties: { desired: { job: 'later' } } }, new Date(Date.now() + 3600 * 1000), 600);
    return { status: res.jobStatus.status, jobId: res.jobStatus.jobId };
  });
  await step('get-later', async () => ({ status: (await jobs.getJob(later)).jobStatus.status }));
  await step('query-jobs', async () => {
    const query = jobs.createQuery('scheduleUpdateTwin', 'scheduled');
    const page = await query.next();
    return { ids: page.result.map((j) => j.jobId) };
  });
  await step('cancel-later', async () => ({ status: (await jobs.cancelJob(later)).jobStatus.status }));

  const now = 'now-' + deviceId.replace(/[^A-Za-z0-9-]/g, '-').slice(0, 40);
  await step('schedule-now', async () => {
    const res = await jobs.scheduleTwinUpdate(now, `deviceId = '${deviceId}'`,
      { etag: '*', properties: { desired: { job: 'now' } } }, new Date(), 60);
    return { status: res.jobStatus.status };
  });
  await step('job-completed', async () => {
    for (let i = 0; i < 200; i++) {
      const job = (await jobs.getJob(now)).jobStatus;
      if (['completed', 'failed', 'cancelled'].includes(job.status)) {
        return { status: job.status, stats: job.deviceJobStatistics };
      }
      await sleep(100);
    }
    throw new Error('job did not finish');
  });
  await step('delete', async () => {
    const res = await registry.delete(deviceId);
    return { httpStatus: res.httpResponse.statusCode };
  });
  emit('done');
}

main().then(() => process.exit(0), () => {});
