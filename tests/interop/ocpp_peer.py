"""An OCPP 1.6 peer built on the independent Python `ocpp` package, which
validates every message against the official JSON schemas. Used by the
interop test as a charger and as a CSMS on either side of the gateway.

    python3 ocpp_peer.py csms [PORT]      # prints "PORT n", then one JSON line per event
    python3 ocpp_peer.py charger URL ID   # runs a session, prints one JSON line per result
    python3 ocpp_peer.py validate [VER]   # "ACTION<TAB>JSON" lines in, schema verdicts out
                                          # (VER: 1.6, the default, or 2.0.1)
    python3 ocpp_peer.py csms201 PROTOS [PORT]
                                          # an OCPP 2.0.1 CSMS accepting the comma-separated
                                          # subprotocols PROTOS (its order of preference)
    python3 ocpp_peer.py charger201 URL ID OFFER
                                          # a 2.0.1 charger offering OFFER (comma-separated,
                                          # in order), runs a transaction if given 2.0.1

The 2.0.1 peers use the package's `v201` classes, which check every message
against the official OCPP 2.0.1 schemas.
"""

import asyncio
import json
import sys
from datetime import datetime, timezone

import websockets
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus, ResetStatus
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201


def out(**kv):
    print(json.dumps(kv, default=str), flush=True)


def now():
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class Csms(ChargePoint):
    @on(Action.boot_notification)
    def on_boot(self, charge_point_vendor, charge_point_model, **kw):
        out(csms_got="BootNotification", vendor=charge_point_vendor, id=self.id)
        return call_result.BootNotification(current_time=now(), interval=300, status=RegistrationStatus.accepted)

    @after(Action.boot_notification)
    async def after_boot(self, **kw):
        # A remote action from the cloud: reboot the charger.
        try:
            result = await self.call(call.Reset(type="Soft"), suppress=False)
            out(reset_result=result.status)
        except Exception as e:  # a CALLERROR (a gateway that refuses it) or a timeout
            out(reset_result="error", error=type(e).__name__)

    @on(Action.heartbeat)
    def on_heartbeat(self):
        out(csms_got="Heartbeat")
        return call_result.Heartbeat(current_time=now())

    @on(Action.authorize)
    def on_authorize(self, id_tag):
        out(csms_got="Authorize", id_tag=id_tag)
        return call_result.Authorize(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.status_notification)
    def on_status(self, connector_id, error_code, status, **kw):
        out(csms_got="StatusNotification", status=status)
        return call_result.StatusNotification()

    @on(Action.start_transaction)
    def on_start(self, connector_id, id_tag, meter_start, timestamp, **kw):
        out(csms_got="StartTransaction", meter_start=meter_start)
        return call_result.StartTransaction(transaction_id=777, id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.meter_values)
    def on_meter(self, connector_id, meter_value, **kw):
        out(csms_got="MeterValues", transaction_id=kw.get("transaction_id"))
        return call_result.MeterValues()

    @on(Action.stop_transaction)
    def on_stop(self, meter_stop, timestamp, transaction_id, **kw):
        out(csms_got="StopTransaction", transaction_id=transaction_id, meter_stop=meter_stop)
        return call_result.StopTransaction()


async def csms(port=0):
    async def handler(ws):
        cp_id = ws.request.path.rstrip("/").split("/")[-1]
        out(csms_connected=cp_id, subprotocol=ws.subprotocol)
        try:
            await Csms(cp_id, ws).start()
        except websockets.exceptions.ConnectionClosed:
            out(csms_disconnected=cp_id)

    server = await websockets.serve(handler, "127.0.0.1", port, subprotocols=["ocpp1.6"])
    port = list(server.sockets)[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await server.serve_forever()


class Charger(ChargePoint):
    reset = None

    @on(Action.reset)
    def on_reset(self, type):
        out(charger_got="Reset", type=type)
        self.reset.set()
        return call_result.Reset(status=ResetStatus.accepted)


async def charger(url, cp_id):
    async with websockets.connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"]) as ws:
        cp = Charger(cp_id, ws)
        cp.reset = asyncio.Event()
        runner = asyncio.create_task(cp.start())
        r = await cp.call(call.BootNotification(charge_point_model="PyModel", charge_point_vendor="PyVendor", firmware_version="py-1"))
        out(result="BootNotification", status=r.status, interval=r.interval)
        r = await cp.call(call.Heartbeat())
        out(result="Heartbeat", current_time=r.current_time)
        r = await cp.call(call.Authorize(id_tag="PYTAG"))
        out(result="Authorize", status=r.id_tag_info["status"])
        await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
        r = await cp.call(call.StartTransaction(connector_id=1, id_tag="PYTAG", meter_start=100, timestamp=now()))
        tx = r.transaction_id
        out(result="StartTransaction", transaction_id=tx)
        mv = [{"timestamp": now(), "sampledValue": [{"value": "150", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]}]
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx, meter_value=mv))
        await cp.call(call.StopTransaction(meter_stop=200, timestamp=now(), transaction_id=tx, reason="Local"))
        out(result="StopTransaction")
        await asyncio.wait_for(cp.reset.wait(), 10)
        runner.cancel()
        out(done=True)


def validate(version="1.6"):
    """One "ACTION<TAB>JSON" call payload per stdin line; prints whether the
    official OCPP schema (1.6 or 2.0.1) accepts it."""
    from ocpp.messages import Call, validate_payload

    for line in sys.stdin:
        action, _, payload = line.rstrip("\n").partition("\t")
        try:
            asyncio.run(validate_payload(Call(unique_id="1", action=action, payload=json.loads(payload)), version))
            out(action=action, ok=True)
        except Exception as e:  # the schema's verdict, whatever its class
            out(action=action, ok=False, error=f"{type(e).__name__}: {e}")


class Csms201(ChargePoint201):
    @on(Action201.boot_notification)
    def on_boot(self, charging_station, reason, **kw):
        out(csms_got="BootNotification", vendor=charging_station["vendor_name"], id=self.id)
        return result201.BootNotification(current_time=now(), interval=300, status="Accepted")

    @on(Action201.heartbeat)
    def on_heartbeat(self):
        out(csms_got="Heartbeat")
        return result201.Heartbeat(current_time=now())

    @on(Action201.status_notification)
    def on_status(self, timestamp, connector_status, evse_id, connector_id, **kw):
        out(csms_got="StatusNotification", status=connector_status, evse_id=evse_id)
        return result201.StatusNotification()

    @on(Action201.authorize)
    def on_authorize(self, id_token, **kw):
        out(csms_got="Authorize", id_token=id_token["id_token"])
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @on(Action201.transaction_event)
    def on_tx(self, event_type, timestamp, trigger_reason, seq_no, transaction_info, **kw):
        out(csms_got="TransactionEvent", event_type=event_type, seq_no=seq_no,
            transaction_id=transaction_info["transaction_id"], offline=kw.get("offline"))
        if event_type == "Started":
            return result201.TransactionEvent(id_token_info={"status": "Accepted"})
        return result201.TransactionEvent()


async def csms201(protos, port=0):
    async def handler(ws):
        cp_id = ws.request.path.rstrip("/").split("/")[-1]
        out(csms_connected=cp_id, subprotocol=ws.subprotocol)
        try:
            await Csms201(cp_id, ws).start()
        except websockets.exceptions.ConnectionClosed:
            out(csms_disconnected=cp_id)

    server = await websockets.serve(handler, "127.0.0.1", port, subprotocols=protos)
    port = list(server.sockets)[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await server.serve_forever()


async def charger201(url, cp_id, offer):
    async with websockets.connect(f"{url}/{cp_id}", subprotocols=offer) as ws:
        out(subprotocol=ws.subprotocol)
        if ws.subprotocol != "ocpp2.0.1":
            return
        cp = ChargePoint201(cp_id, ws)
        runner = asyncio.create_task(cp.start())
        station = {"model": "PyModel201", "vendor_name": "PyVendor"}
        r = await cp.call(call201.BootNotification(charging_station=station, reason="PowerUp"))
        out(result="BootNotification", status=r.status)
        await cp.call(call201.StatusNotification(timestamp=now(), connector_status="Occupied", evse_id=1, connector_id=1))
        r = await cp.call(call201.Authorize(id_token={"id_token": "PYTAG", "type": "ISO14443"}))
        out(result="Authorize", status=r.id_token_info["status"])
        steps = [
            ("Started", "Authorized", {"charging_state": "Charging"}),
            ("Updated", "ChargingStateChanged", {"charging_state": "SuspendedEVSE"}),
            ("Ended", "StopAuthorized", {"charging_state": "EVConnected", "stopped_reason": "Local"}),
        ]
        for seq, (kind, trigger, info) in enumerate(steps):
            mv = [{"timestamp": now(), "sampled_value": [{"value": 100.0 + seq * 50, "measurand": "Energy.Active.Import.Register"}]}]
            extra = {}
            if kind == "Started":
                extra = {"evse": {"id": 1, "connector_id": 1}, "id_token": {"id_token": "PYTAG", "type": "ISO14443"}}
            await cp.call(call201.TransactionEvent(event_type=kind, timestamp=now(), trigger_reason=trigger, seq_no=seq,
                                                   transaction_info={"transaction_id": "py-tx-1", **info}, meter_value=mv, **extra))
            out(result="TransactionEvent", event_type=kind)
        runner.cancel()
        out(done=True)


if __name__ == "__main__":
    if sys.argv[1] == "csms":
        asyncio.run(csms(int(sys.argv[2]) if len(sys.argv) > 2 else 0))
    elif sys.argv[1] == "validate":
        validate(*sys.argv[2:3])
    elif sys.argv[1] == "csms201":
        asyncio.run(csms201(sys.argv[2].split(","), int(sys.argv[3]) if len(sys.argv) > 3 else 0))
    elif sys.argv[1] == "charger201":
        asyncio.run(charger201(sys.argv[2], sys.argv[3], sys.argv[4].split(",")))
    else:
        asyncio.run(charger(sys.argv[2], sys.argv[3]))
