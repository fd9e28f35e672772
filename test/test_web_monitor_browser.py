"""
The web monitor's page in headless Chromium (Debian's chromium and
chromium-driver, driven with selenium): it loads with nothing but
127.0.0.1 on the network, shows events published after it loaded within
2 s, filters by type and origin, and renders markup in events as text.
The test saves a screenshot (in its temp dir; $ION_SCREENSHOT names a copy).

Selenium blocks, so every browser call runs in a thread: the reactor (and
the web monitor in it) keeps serving meanwhile.
"""

import json
import os
import shutil
import time

from twisted.internet import defer, threads

from ion.services.dm.distribution import events
from ion.test.iontest import IonTestCase
from test.brokers import RABBIT_URL
from test.test_web_monitor import HOSTILE, WebMonitorFixture

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver")
SHOWN_WITHIN = 2.0


def why_no_browser():
    if webdriver is None:
        return "selenium is not installed (pip install '.[test]')"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "headless browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    return None


def start_browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--window-size=1280,860",
        # Any host but 127.0.0.1 does not resolve: the page cannot reach out, even if it tried.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


def requested_urls(driver):
    """Every URL the page asked the network for, from Chromium's performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


class WebMonitorBrowserTests(WebMonitorFixture):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.driver = yield threads.deferToThread(start_browser)
        self.addCleanup(threads.deferToThread, self.driver.quit)

    def drive(self, fn, *args, **kwargs):
        return threads.deferToThread(fn, *args, **kwargs)

    def event_items(self):
        return self.driver.find_elements(By.CSS_SELECTOR, "#events li.event")

    def shown_names(self):
        names = []
        for item in self.event_items():
            fields = dict(zip((e.text for e in item.find_elements(By.CSS_SELECTOR, "dt")),
                              (e.text for e in item.find_elements(By.CSS_SELECTOR, "dd"))))
            names.append(fields.get("name"))
        return names

    def wait_until(self, predicate, timeout):
        """In a thread: poll predicate(driver) until true; fails after `timeout` seconds."""
        return self.drive(lambda: WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(predicate))

    @defer.inlineCallbacks
    def load_page(self):
        yield self.drive(self.driver.get, self.base + "/")
        yield self.wait_until(lambda d: d.find_element(By.ID, "status").text == "live", 10)
        yield self.wait_until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#event-type option")) > 10, 10)

    @defer.inlineCallbacks
    def test_page(self):
        yield self.load_page()

        # Events published after the page loaded show within 2 s.
        started = time.monotonic()
        yield self.publish("first after load")
        yield self.wait_until(lambda d: "first after load" in self.shown_names(), SHOWN_WITHIN)
        shown_after = time.monotonic() - started
        self.assertLess(shown_after, SHOWN_WITHIN)

        # Markup in an event is text: no element made of it, no script run.
        yield self.publish(HOSTILE, description=HOSTILE, body="<script>alert(2)</script>")
        yield self.wait_until(lambda d: HOSTILE in self.shown_names(), SHOWN_WITHIN)
        hostile = yield self.drive(lambda: self.event_items()[0])
        values = yield self.drive(lambda: [e.text for e in hostile.find_elements(By.CSS_SELECTOR, "dd")])
        self.assertIn(HOSTILE, values)
        self.assertIn("<script>alert(2)</script>", values)
        images = yield self.drive(self.driver.find_elements, By.CSS_SELECTOR, "#events img, #events script")
        self.assertEqual(images, [])

        def no_alert():
            try:
                self.driver.switch_to.alert
            except NoAlertPresentException:
                return True
            return False

        self.assertTrue((yield self.drive(no_alert)))

        # Filter by type and origin: only Error Log events from origins matching the pattern.
        other = self.origin + "-other"

        def choose():
            Select(self.driver.find_element(By.ID, "event-type")).select_by_value(str(events.LOGGING_ERROR_EVENT_ID))
            box = self.driver.find_element(By.ID, "origin")
            box.clear()
            box.send_keys(other)
            self.driver.find_element(By.ID, "apply").click()

        yield self.drive(choose)
        yield self.wait_until(lambda d: d.find_element(By.ID, "status").text == "live" and not self.event_items(), 5)
        yield self.publish("info: filtered out")
        yield self.publish("error from elsewhere", publisher=self.error_pub, origin=self.origin + "-elsewhere")
        yield self.publish("error wanted", publisher=self.error_pub)
        yield self.wait_until(lambda d: "error wanted" in self.shown_names(), SHOWN_WITHIN)
        names = yield self.drive(self.shown_names)
        self.assertEqual(names, ["error wanted"])
        items = yield self.drive(self.event_items)
        origins = yield self.drive(lambda: [i.get_attribute("data-origin") for i in items])
        self.assertEqual(origins, [other])

        # Pause holds new events back; resume shows them.
        yield self.drive(lambda: self.driver.find_element(By.ID, "pause").click())
        yield self.publish("while paused", publisher=self.error_pub)
        yield self.wait_until(lambda d: d.find_element(By.ID, "held").text == "1", SHOWN_WITHIN)
        self.assertEqual((yield self.drive(self.shown_names)), ["error wanted"])
        yield self.drive(lambda: self.driver.find_element(By.ID, "pause").click())
        yield self.wait_until(lambda d: self.shown_names() == ["while paused", "error wanted"], SHOWN_WITHIN)

        # Back to everything for the screenshot, with a few kinds of event.
        def everything():
            Select(self.driver.find_element(By.ID, "event-type")).select_by_value("")
            box = self.driver.find_element(By.ID, "origin")
            box.clear()
            box.send_keys("#")
            self.driver.find_element(By.ID, "apply").click()

        yield self.drive(everything)
        lifecycle = events.ResourceLifecycleEventPublisher(process=self.proc, origin="instrument-agent-7")
        data = events.DataBlockEventPublisher(process=self.proc, origin="ctd-sbe37")
        for pub in (lifecycle, data):
            yield self.proc.register_life_cycle_object(pub)
        yield lifecycle.create_and_publish_event(state="ACTIVE", name="agent active", description="agent up")
        yield data.create_and_publish_event(name="sample", dataset_id="ds-42", datasource_id="ctd", data_block="3.51,10.2,11.4")
        yield self.wait_until(lambda d: "sample" in self.shown_names(), SHOWN_WITHIN)
        yield self.wait_until(lambda d: d.find_element(By.CSS_SELECTOR, "#rates td") is not None, 3)

        path = os.path.abspath(self.mktemp() + ".png")
        yield self.drive(self.driver.save_screenshot, path)
        self.assertGreater(os.path.getsize(path), 10000)
        if os.environ.get("ION_SCREENSHOT"):
            shutil.copy(path, os.environ["ION_SCREENSHOT"])

        # Nothing but 127.0.0.1 (and the inline data: icon) was asked for.
        urls = yield self.drive(requested_urls, self.driver)
        self.assertTrue(urls)
        outside = [u for u in urls if not (u.startswith("http://127.0.0.1:") or u.startswith("data:"))]
        self.assertEqual(outside, [])
        console = yield self.drive(self.driver.get_log, "browser")
        self.assertEqual([e for e in console if e["level"] == "SEVERE"], [])
        print("web monitor page: first event shown %.3f s after publishing; screenshot %s" % (shown_after, path))


reason = why_no_browser()
if reason:
    WebMonitorBrowserTests.skip = reason


class WebMonitorBrowserMemoryTest(WebMonitorBrowserTests, IonTestCase):
    broker_url = "memory"


class WebMonitorBrowserRabbitTest(WebMonitorBrowserTests, IonTestCase):
    broker_url = RABBIT_URL
