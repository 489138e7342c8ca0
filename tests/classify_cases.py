"""Realistic prompts with the task and difficulty band a person would give them, for the
heuristic classifier's table-driven tests.

``TUNE`` is what the classifier's cues and weights were adjusted against; ``HELD_OUT`` was written
at the same time, in other words and on other subjects, and is never tuned on: its accuracy says
whether the classifier generalises or merely remembers ``TUNE``. Bands: ``easy`` is a difficulty
below 0.3, ``medium`` 0.3 up to 0.6, ``hard`` 0.6 and above (the embedded default config sends
``complexity >= 0.6`` to the strong route).
"""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    prompt: str
    task: str
    band: str
    json: bool = False


BANDS = {"easy": (0.0, 0.3), "medium": (0.3, 0.6), "hard": (0.6, 1.01)}

TUNE: list[Case] = [
    # chat and short factual questions
    Case("hi!", "chat", "easy"),
    Case("Good morning, how are you today?", "chat", "easy"),
    Case("Thanks, that helped a lot.", "chat", "easy"),
    Case("What's the capital of Australia?", "chat", "easy"),
    Case("Who wrote Pride and Prejudice?", "chat", "easy"),
    Case("How many ounces are in a pound?", "chat", "easy"),
    Case("Can you recommend a good sci-fi book for a long flight?", "chat", "easy"),
    Case("What time zone is Tokyo in?", "chat", "easy"),
    Case("Tell me a fun fact about octopuses.", "chat", "easy"),
    Case("Why is the sky blue?", "chat", "easy"),
    # translation
    Case("Translate 'Where is the train station?' into Spanish.", "translation", "easy"),
    Case("How do you say 'thank you very much' in Japanese?", "translation", "easy"),
    Case("Please translate the following paragraph into German, keeping the formal tone: We are "
         "pleased to inform you that your application has been approved. Your account will be "
         "activated within two business days.", "translation", "easy"),
    Case("Traduis en anglais : Je voudrais réserver une table pour deux personnes ce soir.",
         "translation", "easy"),
    Case("Translate this legal clause into French and keep the defined terms in English: 'The "
         "Licensee shall indemnify the Licensor against all claims arising from the Licensee's "
         "use of the Software, provided that the Licensor notifies the Licensee promptly and in "
         "writing of any such claim.'", "translation", "easy"),
    # extraction
    Case("Extract the name, email and phone number from this signature and return JSON: John "
         "Smith | Sales Lead | john.smith@acme.com | +1 415 555 0132", "extraction", "easy"),
    Case("From the invoice text below, return a JSON object with invoice_number, date, total and "
         "currency.\n\nINVOICE #INV-2024-0113\nDate: 12 March 2024\nTotal due: 1,250.00 EUR",
         "extraction", "easy"),
    Case("List every date mentioned in this text: The contract was signed on 3 May 2021, amended "
         "on 14 June 2022 and terminated on 1 January 2024.", "extraction", "easy"),
    Case("Classify the sentiment of each review as positive, negative or neutral and output a "
         "JSON array: 1) 'Great battery life' 2) 'Broke after a week' 3) 'It's fine I guess'",
         "extraction", "easy"),
    Case("Parse these log lines into JSON objects with timestamp, level and message fields:\n"
         "2024-05-01 12:00:01 ERROR Disk full\n2024-05-01 12:00:05 WARN Retrying write",
         "extraction", "easy"),
    Case("Give me the company names and their founding years from this paragraph: Acme was "
         "founded in 1952, while Globex started in 1989 and Initech in 1996.", "extraction",
         "easy", json=True),
    # summaries (an extra task value)
    Case("Summarize this article in three bullet points: The city council voted on Tuesday to "
         "expand the bike lane network by 40 kilometres over the next two years. Supporters "
         "said the plan would cut traffic and emissions; opponents worried about parking and "
         "the cost, estimated at 12 million euros. Construction starts in spring.", "summarize",
         "easy"),
    Case("TL;DR of this email please: Hi team, the launch moves from the 4th to the 11th because "
         "the payment provider needs another week for certification. Marketing should hold the "
         "announcement. Support, please update the FAQ. Thanks, Dana", "summarize", "easy"),
    # creative writing
    Case("Write a haiku about autumn rain.", "creative", "easy"),
    Case("Write a short bedtime story about a dragon who is afraid of the dark.", "creative",
         "easy"),
    Case("Come up with five catchy slogans for a vegan bakery.", "creative", "easy"),
    Case("Write a limerick about a cat who learns to code.", "creative", "easy"),
    Case("Compose a wedding toast for my best friend Sam, funny but heartfelt, about two minutes "
         "long.", "creative", "easy"),
    Case("Write a 1,500-word short story in the style of Raymond Carver about two estranged "
         "brothers meeting at their father's funeral; use an unreliable narrator, keep the "
         "dialogue sparse, and end on an ambiguous note.", "creative", "medium"),
    # math and proofs
    Case("What is 17 * 23?", "math", "easy"),
    Case("Solve for x: 3x + 7 = 22.", "math", "easy"),
    Case("What is 15% of 240?", "math", "easy"),
    Case("Compute the derivative of x^3 * sin(x).", "math", "medium"),
    Case("A bag has 5 red and 7 blue marbles. If I draw 3 without replacement, what is the "
         "probability that exactly 2 are red? Show your work.", "math", "medium"),
    Case("Prove that the square root of 2 is irrational.", "math", "hard"),
    Case("Prove that every bounded monotone sequence of real numbers converges, and explain "
         "which axiom of the reals the proof depends on.", "math", "hard"),
    Case("Find all integer solutions of x^2 - 5y^2 = 1 and prove there are infinitely many.",
         "math", "hard"),
    # code
    Case("How do I reverse a list in Python?", "code", "easy"),
    Case("Write a regex that matches US ZIP codes, with an optional +4 suffix.", "code", "easy"),
    Case("Write a SQL query that returns the top 5 customers by total order amount.", "code",
         "easy"),
    Case("Write a function in Go that merges two sorted slices of ints into one sorted slice.",
         "code", "easy"),
    Case("I'm getting this error, what's wrong?\n\nTraceback (most recent call last):\n  File "
         "\"app.py\", line 12, in <module>\n    total = sum(prices) / len(prices)\n"
         "ZeroDivisionError: division by zero", "code", "medium"),
    Case("My React component re-renders infinitely. Here's the code:\n```jsx\nfunction Profile("
         "{id}) {\n  const [user, setUser] = useState(null);\n  useEffect(() => { fetch(`/api/"
         "users/${id}`).then(r => r.json()).then(setUser); });\n  return <div>{user?.name}</div>;"
         "\n}\n```\nWhy, and how do I fix it?", "code", "medium"),
    Case("Implement a thread-safe LRU cache in Java with O(1) get and put, support TTL expiry per "
         "entry, and explain how you avoid lock contention under high concurrency.", "code",
         "hard"),
    Case("Our Kubernetes pods get OOMKilled under load. Here is the stack trace from the JVM:\n"
         "java.lang.OutOfMemoryError: Java heap space\n\tat java.util.Arrays.copyOf(Arrays.java:"
         "3210)\n\tat java.util.ArrayList.grow(ArrayList.java:265)\n\tat com.acme.ingest."
         "BatchBuffer.add(BatchBuffer.java:88)\nAnalyze the likely root causes, propose how to "
         "diagnose each, and suggest fixes with their trade-offs.", "code", "hard"),
    # reasoning, analysis and design
    Case("Design a distributed architecture, analyze the trade-offs, compare options, step by "
         "step, and explain why", "reasoning", "hard"),
    Case("Should our five-person startup use microservices or a monolith? Compare the options "
         "for team size, deployment and cost, and recommend one with reasons.", "reasoning",
         "hard"),
    Case("If all bloops are razzies and all razzies are lazzies, are all bloops definitely "
         "lazzies? Explain.", "reasoning", "medium"),
    Case("Three friends, Ana, Ben and Cy, each own a different pet: a cat, a dog and a fish. Ana "
         "doesn't own the dog. Ben owns neither the dog nor the fish. Who owns what? Walk me "
         "through your reasoning.", "reasoning", "medium"),
    Case("We're deciding between PostgreSQL and DynamoDB for a multi-tenant SaaS with "
         "unpredictable write spikes, strict per-tenant isolation and ad-hoc reporting needs. "
         "Weigh consistency, cost at 10x growth, operational burden and migration risk, and give "
         "a recommendation with the assumptions that would change it.", "reasoning", "hard"),
    Case("Explain why inflation can rise even when unemployment is high, and evaluate whether "
         "the 1970s stagflation supports or undermines the Phillips curve.", "reasoning", "hard"),
    Case("What are the pros and cons of remote work?", "reasoning", "medium"),
    Case("Plan a migration of a 2 TB MySQL database to a new region with under five minutes of "
         "downtime. Lay out the steps, the risks at each step and how you would roll back.",
         "reasoning", "hard"),
]

HELD_OUT: list[Case] = [
    Case("hey there, what's up?", "chat", "easy"),
    Case("Who painted the Mona Lisa?", "chat", "easy"),
    Case("Is it safe to eat raw cookie dough?", "chat", "easy"),
    Case("How tall is Mount Everest?", "chat", "easy"),
    Case("lol ok thanks", "chat", "easy"),
    Case("Can you translate 'I love you' into Italian?", "translation", "easy"),
    Case("Übersetze bitte ins Englische: Das Meeting wurde auf Donnerstag verschoben.",
         "translation", "easy"),
    Case("Render this sentence in Portuguese: The store closes at nine on weekdays.",
         "translation", "easy"),
    Case("Pull out all the email addresses from this text and give them back as a JSON list: "
         "Contact alice@example.org for sales, bob@example.net for support, or write to "
         "press@example.com.", "extraction", "easy"),
    Case("Here is a job posting. Return JSON with title, location, salary_range and "
         "required_skills.\n\nSenior Data Engineer – Berlin (hybrid). €75k–€90k. You know "
         "Python, Spark and Airflow.", "extraction", "easy"),
    Case("Identify the people and organizations mentioned in this sentence: 'Satya Nadella "
         "announced that Microsoft would partner with OpenAI.'", "extraction", "easy"),
    Case("Can you summarise the key points of this meeting transcript? Priya: we're behind on "
         "the mobile release. Tom: QA found two blockers in checkout. Priya: then we ship web "
         "first and mobile next sprint. Tom: agreed, I'll tell support.", "summarize", "easy"),
    Case("Write a poem about the ocean from the point of view of a lighthouse.", "creative",
         "easy"),
    Case("Draft a funny product description for a self-aware toaster.", "creative", "easy"),
    Case("Write song lyrics about leaving your hometown.", "creative", "easy"),
    Case("Give me a plot outline for a mystery novel set on a generation ship, with three "
         "suspects, a twist in the second act, and clues planted fairly for the reader.",
         "creative", "medium"),
    Case("What's 144 divided by 12?", "math", "easy"),
    Case("If a train travels 300 km in 2.5 hours, what's its average speed?", "math", "easy"),
    Case("Integrate x * e^x dx.", "math", "medium"),
    Case("Show that the sum of the first n odd numbers is n^2.", "math", "hard"),
    Case("Prove that there is no largest prime number, then generalise the argument to primes of "
         "the form 4k+3.", "math", "hard"),
    Case("How do I check if a key exists in a JavaScript object?", "code", "easy"),
    Case("Write a bash one-liner that counts the lines in all .log files in a directory.", "code",
         "easy"),
    Case("Fix this: TypeError: Cannot read properties of undefined (reading 'map') at TodoList "
         "(TodoList.js:14:22)", "code", "medium"),
    Case("Refactor this Python class to use dependency injection so it can be unit tested, and "
         "explain the design choices:\n```python\nclass ReportService:\n    def __init__(self):\n"
         "        self.db = PostgresClient(os.environ['DB_URL'])\n        self.mailer = "
         "SmtpMailer()\n    def send_weekly(self):\n        rows = self.db.query('select * from "
         "sales')\n        self.mailer.send('boss@x.com', format(rows))\n```", "code", "medium"),
    Case("Is it better to rent or buy a home in a city where prices are 25 times annual rent? "
         "Consider opportunity cost, maintenance, mobility and tax, and tell me which assumptions "
         "matter most.", "reasoning", "hard"),
    Case("A man pushes his car to a hotel and tells the owner he's bankrupt. Why?", "reasoning",
         "medium"),
    Case("Compare Kafka and RabbitMQ for an event-driven order pipeline.", "reasoning",
         "medium"),
    Case("Our checkout conversion dropped 12% after a redesign, but only on mobile and only for "
         "returning users. Reason through the possible causes, how to test each hypothesis, and "
         "what data you would need.", "reasoning", "hard"),
    Case("Design a rate limiter for a distributed API gateway that handles 1M requests per second "
         "across regions; discuss the algorithms (token bucket, sliding window), consistency "
         "across nodes, and failure modes, with pseudocode.", "reasoning", "hard"),
]
