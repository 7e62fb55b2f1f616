'use strict';
// A device built on the OFFICIAL Azure IoT Node SDK (azure-iot-device + azure-iot-device-mqtt),
// driven by tests/interop/test_node_sdk.py against an iot_flows hub over MQTT/TLS.
//
// Every step prints one JSON line on stdout ({"event": ...}); diagnostics go to stderr.
//
// Environment:
//   INTEROP_CONNECTION_STRING  device connection string: HostName=127.0.0.1;DeviceId=...;SharedAccessKey=...
//   INTEROP_CA_FILE            PEM file of the CA that signed the hub's server certificate
//   INTEROP_MQTTS_PORT         the hub's MQTT-over-TLS port (the SDK would otherwise use 8883)
//   INTEROP_MODE               "full" (default): twin + reported + desired + method, see below
//                              "connect": open, report the outcome, close
//   INTEROP_EXPECT_DESIRED     desired key whose arrival ends the "full" run (default "colour")
//   INTEROP_METHOD             direct method to answer (default "lockDoor")
//   INTEROP_MODEL_ID           optional Plug and Play model id (the SDK's setOptions({modelId}))
//   INTEROP_TIMEOUT_MS         overall deadline; on expiry print {"event":"timeout"} and exit 1 (default 60000)
//   INTEROP_TOKEN_TTL_S, INTEROP_TOKEN_MARGIN_S
//                              optional SAS validity and renewal margin: the SDK renews its token every
//                              (TTL - MARGIN) s, which in MQTT is DISCONNECT + CONNECT with the new
//                              password (clean=false, no re-SUBSCRIBE). In "full" mode each renewal
//                              after the first reported patch is followed by a reported patch
//                              {"interop":{"renewals":n}} and a {"event":"renewal-reported","count":n} line.
//
// Port: the SDK builds its broker URI as `mqtts://<GatewayHostName || HostName>`
// (azure-iot-device-mqtt/dist/mqtt.js, _getBaseTransportConfig), while the MQTT username and
// the SAS `sr` always use HostName. So a `GatewayHostName=<HostName>:<port>` connection-string
// field (the SDK's supported way to reach an IoT Edge gateway) points the SDK at our port
// without changing the identity it presents. No monkey-patching needed.
//
// Exit codes: 0 success; 1 timeout; 2 an SDK operation failed; 3 open() failed (connect mode).

const fs = require('fs');
const { Client, SharedAccessKeyAuthenticationProvider } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const env = process.env;
const mode = env.INTEROP_MODE || 'full';
const expectDesired = env.INTEROP_EXPECT_DESIRED || 'colour';
const methodName = env.INTEROP_METHOD || 'lockDoor';
const timeoutMs = Number(env.INTEROP_TIMEOUT_MS || 60000);
const started = Date.now();

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event: event, elapsedMs: Date.now() - started }, fields || {})) + '\n');
}

function errorFields(err) {
  return {
    name: err && err.constructor ? err.constructor.name : typeof err,
    message: err && err.message ? String(err.message) : String(err),
    transportError: err && err.transportError ? String(err.transportError.message || err.transportError) : undefined,
  };
}

let client = null;
let authProvider = null;
let finished = false;

function finish(code) {
  if (finished) return;
  finished = true;
  clearTimeout(deadline);
  const exit = () => process.stdout.write('', () => process.exit(code));
  if (!client) return exit();
  // Never hang in close(): the deadline below still applies.
  const guard = setTimeout(exit, 5000);
  client.close((err) => {
    clearTimeout(guard);
    if (err) console.error('close failed: ' + err.message);
    emit('closed');
    exit();
  });
}

function fail(stage, err) {
  console.error(stage + ' failed: ' + (err && err.stack ? err.stack : err));
  emit('error', Object.assign({ stage: stage }, errorFields(err)));
  finish(2);
}

const deadline = setTimeout(() => {
  emit('timeout', { timeoutMs: timeoutMs });
  finished = true;
  process.stdout.write('', () => process.exit(1));
}, timeoutMs);

function main() {
  for (const name of ['INTEROP_CONNECTION_STRING', 'INTEROP_CA_FILE', 'INTEROP_MQTTS_PORT']) {
    if (!env[name]) {
      emit('error', { stage: 'config', name: 'ConfigError', message: name + ' is not set' });
      finished = true;
      process.exit(2);
    }
  }
  let connectionString = env.INTEROP_CONNECTION_STRING.replace(/;+$/, '');
  const host = /(?:^|;)HostName=([^;]+)/.exec(connectionString)[1];
  connectionString += ';GatewayHostName=' + host + ':' + env.INTEROP_MQTTS_PORT;

  if (env.INTEROP_TOKEN_TTL_S) {
    // The public way to choose token lifetimes: build the SAS provider, then the client from it.
    authProvider = SharedAccessKeyAuthenticationProvider.fromConnectionString(
      connectionString, Number(env.INTEROP_TOKEN_TTL_S), Number(env.INTEROP_TOKEN_MARGIN_S));
    client = Client.fromAuthenticationProvider(authProvider, Mqtt);
  } else {
    client = Client.fromConnectionString(connectionString, Mqtt);
  }
  const options = { ca: fs.readFileSync(env.INTEROP_CA_FILE, 'utf8') };
  if (env.INTEROP_MODEL_ID) options.modelId = env.INTEROP_MODEL_ID; // Plug and Play: &model-id= in the username
  client.setOptions(options);
  client.on('error', (err) => fail('client', err));
  client.on('disconnect', (err) => {
    if (!finished) emit('disconnect', err ? errorFields(err) : {});
  });

  client.open((err) => {
    if (err) {
      emit('open-error', errorFields(err));
      if (mode === 'connect') {
        finished = true;
        clearTimeout(deadline);
        return process.stdout.write('', () => process.exit(3));
      }
      return fail('open', err);
    }
    emit('connected');
    if (mode === 'connect') return finish(0);
    runFull();
  });
}

function runFull() {
  let sawDesired = false;
  let answeredMethod = false;
  const maybeDone = () => {
    if (sawDesired && answeredMethod) {
      emit('done');
      finish(0);
    }
  };

  // Register the method handler first: the SDK subscribes to $iothub/methods/POST/# now.
  client.onDeviceMethod(methodName, (request, response) => {
    const result = { locked: true, door: request.payload && request.payload.door, by: 'azure-iot-device-node' };
    emit('method', { name: request.methodName, payload: request.payload, requestId: request.requestId, response: result });
    response.send(200, result, (err) => {
      if (err) return fail('method-response', err);
      emit('method-answered', { name: request.methodName });
      answeredMethod = true;
      maybeDone();
    });
  });

  client.getTwin((err, twin) => {
    if (err) return fail('getTwin', err);
    emit('twin', { twin: { desired: twin.properties.desired, reported: stripFunctions(twin.properties.reported) } });
    twin.on('error', (twinErr) => fail('twin', twinErr));

    // Adding the first 'properties.desired' listener makes the SDK subscribe to
    // $iothub/twin/PATCH/properties/desired/#. That SUBSCRIBE goes out on the same connection
    // before the reported PATCH below, so it is in force by the time "reported-ok" is printed.
    // The SDK fires the listener once at once with the current desired properties, then once per patch.
    twin.on('properties.desired', (patch) => {
      emit('desired', { patch: patch });
      if (patch && Object.prototype.hasOwnProperty.call(patch, expectDesired)) {
        sawDesired = true;
        maybeDone();
      }
    });

    const reported = { interop: { node: true, ts: new Date().toISOString(), sdk: 'azure-iot-device-mqtt' } };
    twin.properties.reported.update(reported, (updateErr) => {
      if (updateErr) return fail('reported', updateErr);
      emit('reported-ok', { reported: reported });
      if (authProvider) watchRenewals(twin);
    });
  });
}

function watchRenewals(twin) {
  let renewals = 0;
  authProvider.on('newTokenAvailable', () => {
    renewals += 1;
    const count = renewals;
    emit('token-renewed', { count: count });
    // Queued by the SDK until its reconnect with the new token is done; the answer arrives on
    // the $iothub/twin/res/# subscription made before the renewal (the SDK never re-subscribes).
    twin.properties.reported.update({ interop: { renewals: count } }, (err) => {
      if (err) return fail('renewal-reported', err);
      emit('renewal-reported', { count: count });
    });
  });
}

function stripFunctions(obj) {
  // twin.properties.reported carries an update() method; keep only the data.
  return JSON.parse(JSON.stringify(obj));
}

try {
  main();
} catch (err) {
  fail('main', err);
}
