"""
Subscribers of one process get receiver names of their own, on both brokers.

R1 numbered a subscriber's receiver with the count of the process's
registered lifecycle objects, so subscribers built before any of them was
registered shared a name and one entry of the exchange manager's store.
"""

from twisted.internet import defer

from ion.core.process.process import Process
from ion.services.dm.distribution import events
from ion.test.iontest import IonTestCase
from test.brokers import BrokerTestMixin, for_each_broker
from test.test_events import Collector


class SubscriberNameTests(BrokerTestMixin):
    @defer.inlineCallbacks
    def setUp(self):
        yield self._start_container()
        self.proc = Process(spawnargs={"proc-name": "named-subscribers"})
        yield self.proc.spawn()

    def build(self, origin):
        sub = events.InfoLoggingEventSubscriber(process=self.proc, origin=origin)
        sub.ondata = Collector()
        return sub

    @defer.inlineCallbacks
    def test_subscribers_built_before_registering_have_their_own_names(self):
        origin = self.unique_name("names")
        first, second = self.build(origin), self.build(origin)
        self.assertNotEqual(first._sub_name, second._sub_name)
        for sub in (first, second):
            yield self.proc.register_life_cycle_object(sub)
        store = first.exchange_manager.store
        self.assertIn(first._recv.xname, store)
        self.assertIn(second._recv.xname, store)

        publisher = events.InfoLoggingEventPublisher(process=self.proc, origin=origin)
        yield self.proc.register_life_cycle_object(publisher)
        yield publisher.create_and_publish_event(name="both")
        for sub in (first, second):
            (data,) = yield sub.ondata.wait(1)
            self.assertEqual(data["content"].name, "both")

        yield first.terminate()
        self.assertNotIn(first._recv.xname, store)
        self.assertIn(second._recv.xname, store)


for_each_broker(SubscriberNameTests, globals(), base=IonTestCase)
