# ruff: noqa: RUF001
"""Writes train.jsonl and test.jsonl of the bilingual e-learning question dataset.

Every example was written for this repository (no scraped or third-party text):
- `authored:template-v1`  sentence templates with slot lists, expanded deterministically (seed 20261127);
- `authored:hand`         single sentences written one by one;
- `authored:hand-banglish` romanised Bengali / code-mixed sentences, labelled `bn`.

The split is fixed and grouped by template: every expansion of one template lands on the same side,
so the test set measures phrasings the classifier has not seen, with about 25 % of each
(label, language) cell in test. Run `python data/questions/make_dataset.py` to regenerate; the output
is byte-identical (the committed jsonl files are the data of record).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Any

SEED = 20261127
PER_CELL = 62  # target examples per (label, language)
TEST_SHARE = 0.25
HERE = Path(__file__).resolve().parent

LABELS = ["subject_question", "exam_logistics", "account_admin", "greeting", "feedback_request", "off_topic"]

# ---------------------------------------------------------------- slot lists
EN_SLOTS: dict[str, list[Any]] = {
    "topic": [
        "quadratic equations",
        "the Pythagorean theorem",
        "simple interest",
        "LCM and HCF",
        "fractions",
        "percentages",
        "the area of a circle",
        "prime numbers",
        "probability",
        "linear equations",
        "trigonometric ratios",
        "ratio and proportion",
        "photosynthesis",
        "Newton's third law",
        "the water cycle",
        "acids and bases",
        "the human heart",
        "cell division",
        "magnetism",
        "the periodic table",
        "refraction of light",
        "food chains",
        "the Battle of Plassey",
        "the Language Movement of 1952",
        "the partition of Bengal in 1905",
        "the Liberation War of 1971",
        "the Mughal empire",
        "the Sepoy Mutiny",
        "the Bengal Renaissance",
        "monsoon winds",
        "the Sundarbans mangroves",
        "latitude and longitude",
        "earthquakes",
        "the passive voice",
        "the present perfect tense",
        "osmosis",
        "Ohm's law",
        "the solar system",
        "compound interest",
        "the mitochondria",
    ],
    "exam": [
        "the HSC exam",
        "the SSC exam",
        "Madhyamik",
        "the Higher Secondary exam",
        "WBJEE",
        "the half-yearly exam",
        "the final term exam",
        "the class test",
        "the model test",
        "the board exam",
        "the mock test",
        "the pre-test exam",
        "the JSC exam",
        "the unit test",
    ],
    "plan": [
        "the premium plan",
        "the monthly plan",
        "the yearly subscription",
        "the HSC crash course",
        "the Madhyamik package",
    ],
    "pay": ["bKash", "Nagad", "UPI", "a debit card", "Rocket", "Google Pay", "PhonePe"],
    "section": [
        "the video lessons",
        "the quiz section",
        "my dashboard",
        "the live class",
        "the downloads page",
        "the practice tests",
    ],
    "hello": ["hi", "hello", "hey", "good morning", "good evening", "good afternoon", "hey there", "hiya"],
    "who": ["", " tutor", " teacher", " sir", " madam", " didi", " bhaiya", " buddy"],
    "thanks": ["thanks", "thank you", "thanks a lot", "thank you so much", "many thanks", "thx"],
    "work": [
        "essay",
        "composition",
        "letter",
        "paragraph",
        "answer script",
        "homework",
        "summary",
        "translation",
        "lab report",
        "short answer",
    ],
    "essay": [
        "my village",
        "the Padma Bridge",
        "climate change",
        "my favourite teacher",
        "a rainy day",
        "Digital Bangladesh",
        "Durga Puja",
        "Pohela Boishakh",
        "the importance of trees",
        "my aim in life",
        "a visit to a historical place",
    ],
    "eq": [
        "2x + 3 = 11 so x = 4",
        "x^2 - 5x + 6 = 0 gives x = 2 and 3",
        "3(x - 1) = 12 so x = 5",
        "the area of a circle of radius 7 cm is 154 sq cm",
        "15% of 240 is 36",
        "LCM of 12 and 18 is 36",
    ],
    "city": ["Kolkata", "Dhaka", "Siliguri", "Chittagong", "Sylhet", "Durgapur", "Khulna", "Howrah", "Rajshahi"],
    "food": ["biryani", "hilsa curry", "khichuri", "luchi", "fuchka", "mishti doi", "chicken rezala"],
    "singer": ["Arijit Singh", "James", "Ayub Bachchu", "Shreya Ghoshal", "Habib Wahid", "Anupam Roy"],
    "team": ["Bangladesh", "India", "Mohun Bagan", "East Bengal", "Argentina", "Brazil", "KKR"],
}

BN_SLOTS: dict[str, list[Any]] = {
    "topic": [
        "দ্বিঘাত সমীকরণ",
        "পিথাগোরাসের উপপাদ্য",
        "সরল সুদ",
        "ল.সা.গু. ও গ.সা.গু.",
        "ভগ্নাংশ",
        "শতকরা",
        "বৃত্তের ক্ষেত্রফল",
        "মৌলিক সংখ্যা",
        "সম্ভাবনা",
        "সালোকসংশ্লেষণ",
        "নিউটনের তৃতীয় সূত্র",
        "জলচক্র",
        "অম্ল ও ক্ষার",
        "মানুষের হৃৎপিণ্ড",
        "কোষ বিভাজন",
        "চুম্বকত্ব",
        "পর্যায় সারণি",
        "আলোর প্রতিসরণ",
        "খাদ্য শৃঙ্খল",
        "পলাশীর যুদ্ধ",
        "ভাষা আন্দোলন",
        "বঙ্গভঙ্গ",
        "মুক্তিযুদ্ধ",
        "মুঘল সাম্রাজ্য",
        "সিপাহী বিদ্রোহ",
        "মৌসুমি বায়ু",
        "সুন্দরবন",
        "অক্ষাংশ ও দ্রাঘিমাংশ",
        "ভূমিকম্প",
        "কারক ও বিভক্তি",
        "সমাস",
        "সন্ধি",
        "বাচ্য পরিবর্তন",
        "অভিস্রবণ",
        "ওহমের সূত্র",
        "সৌরজগৎ",
        "চক্রবৃদ্ধি সুদ",
    ],
    # (nominative, genitive)
    "exam": [
        ("এইচএসসি পরীক্ষা", "এইচএসসি পরীক্ষার"),
        ("এসএসসি পরীক্ষা", "এসএসসি পরীক্ষার"),
        ("মাধ্যমিক পরীক্ষা", "মাধ্যমিক পরীক্ষার"),
        ("উচ্চমাধ্যমিক পরীক্ষা", "উচ্চমাধ্যমিক পরীক্ষার"),
        ("অর্ধবার্ষিক পরীক্ষা", "অর্ধবার্ষিক পরীক্ষার"),
        ("বার্ষিক পরীক্ষা", "বার্ষিক পরীক্ষার"),
        ("ক্লাস টেস্ট", "ক্লাস টেস্টের"),
        ("মডেল টেস্ট", "মডেল টেস্টের"),
        ("বোর্ড পরীক্ষা", "বোর্ড পরীক্ষার"),
        ("জয়েন্ট এন্ট্রান্স", "জয়েন্ট এন্ট্রান্সের"),
        ("টেস্ট পরীক্ষা", "টেস্ট পরীক্ষার"),
        ("প্রাক-নির্বাচনী পরীক্ষা", "প্রাক-নির্বাচনী পরীক্ষার"),
        ("সাপ্তাহিক পরীক্ষা", "সাপ্তাহিক পরীক্ষার"),
    ],
    "plan": [
        ("প্রিমিয়াম প্ল্যান", "প্রিমিয়াম প্ল্যানের"),
        ("মাসিক সাবস্ক্রিপশন", "মাসিক সাবস্ক্রিপশনের"),
        ("বার্ষিক প্যাকেজ", "বার্ষিক প্যাকেজের"),
        ("ক্র্যাশ কোর্স", "ক্র্যাশ কোর্সের"),
        ("মাধ্যমিক প্যাকেজ", "মাধ্যমিক প্যাকেজের"),
    ],
    "pay": ["বিকাশ", "নগদ", "রকেট", "ইউপিআই", "ডেবিট কার্ড", "bKash", "গুগল পে"],
    "section": ["ভিডিও ক্লাস", "কুইজ অংশ", "লাইভ ক্লাস", "ড্যাশবোর্ড", "ডাউনলোড পেজ", "অনুশীলন পরীক্ষা"],
    "hello": ["নমস্কার", "আসসালামু আলাইকুম", "হ্যালো", "শুভ সকাল", "শুভ সন্ধ্যা", "হাই", "সালাম", "শুভ অপরাহ্ন"],
    "who": ["", " স্যার", " ম্যাডাম", " দিদি", " ভাইয়া", " বন্ধু", " দাদা", " আপু"],
    "thanks": ["ধন্যবাদ", "অনেক ধন্যবাদ", "তোমাকে অনেক ধন্যবাদ", "আপনাকে ধন্যবাদ", "অসংখ্য ধন্যবাদ"],
    "work": ["রচনা", "অনুচ্ছেদ", "চিঠি", "উত্তর", "অনুবাদ", "সারাংশ", "বাড়ির কাজ", "ভাবসম্প্রসারণ", "দরখাস্ত"],
    "essay": [
        "আমার গ্রাম",
        "পদ্মা সেতু",
        "জলবায়ু পরিবর্তন",
        "আমার প্রিয় শিক্ষক",
        "একটি বর্ষণমুখর দিন",
        "ডিজিটাল বাংলাদেশ",
        "দুর্গাপূজা",
        "পহেলা বৈশাখ",
        "বৃক্ষরোপণ",
        "আমার জীবনের লক্ষ্য",
    ],
    "eq": [
        "২x + ৩ = ১১ হলে x = ৪",
        "x² - ৫x + ৬ = ০ হলে x = ২ ও ৩",
        "১৫০ এর ২০% = ৩০",
        "৭ সেমি ব্যাসার্ধের বৃত্তের ক্ষেত্রফল ১৫৪ বর্গ সেমি",
        "১২ ও ১৮ এর ল.সা.গু. ৩৬",
    ],
    "city": [
        ("কলকাতা", "কলকাতার"),
        ("ঢাকা", "ঢাকার"),
        ("শিলিগুড়ি", "শিলিগুড়ির"),
        ("চট্টগ্রাম", "চট্টগ্রামের"),
        ("সিলেট", "সিলেটের"),
        ("খুলনা", "খুলনার"),
        ("হাওড়া", "হাওড়ার"),
        ("দুর্গাপুর", "দুর্গাপুরের"),
        ("রাজশাহী", "রাজশাহীর"),
    ],
    "food": ["ইলিশ মাছের ঝোল", "বিরিয়ানি", "খিচুড়ি", "লুচি", "ফুচকা", "মিষ্টি দই", "পায়েস", "চিংড়ির মালাইকারি"],
    "singer": [
        ("অরিজিৎ সিং", "অরিজিৎ সিংয়ের"),
        ("জেমস", "জেমসের"),
        ("আইয়ুব বাচ্চু", "আইয়ুব বাচ্চুর"),
        ("শ্রেয়া ঘোষাল", "শ্রেয়া ঘোষালের"),
        ("হাবিব ওয়াহিদ", "হাবিব ওয়াহিদের"),
        ("অনুপম রায়", "অনুপম রায়ের"),
    ],
    "team": ["বাংলাদেশ", "ভারত", "মোহনবাগান", "ইস্টবেঙ্গল", "আর্জেন্টিনা", "ব্রাজিল"],
}

# ---------------------------------------------------------------- templates
# A template's slots are written {slot} (a plain value) or {slot.0}/{slot.1} (nominative/genitive pairs).
EN_TEMPLATES: dict[str, list[str]] = {
    "subject_question": [
        "What is {topic}?",
        "Can you explain {topic}?",
        "explain {topic} in simple words please",
        "I don't understand {topic}, can you help?",
        "Give me an example of {topic}.",
        "What are the most important points about {topic}?",
        "How would you describe {topic} to a class 8 student?",
        "teach me {topic}",
        "Why is {topic} important?",
        "Can you summarise {topic} in five lines?",
        "What are some exam-style questions on {topic} with answers?",
        "I'm stuck on {topic}, where do I start?",
    ],
    "exam_logistics": [
        "When is {exam}?",
        "When will the results of {exam} be published?",
        "Where can I download my admit card for {exam}?",
        "What is the syllabus for {exam}?",
        "Has the routine for {exam} been published?",
        "What are the full marks of {exam}?",
        "What time does {exam} start?",
        "Is {exam} postponed?",
        "Where is my exam centre for {exam}?",
        "What is the last date to fill in the form for {exam}?",
        "Is there negative marking in {exam}?",
        "How many hours long is {exam}?",
        "How do I apply for re-evaluation after {exam}?",
        "Will {exam} be online or offline?",
        "Which documents must I carry to {exam}?",
    ],
    "account_admin": [
        "How do I pay for {plan} with {pay}?",
        "My payment via {pay} failed but the money was deducted",
        "How do I cancel {plan}?",
        "How do I upgrade to {plan}?",
        "{plan} expired, how do I renew it?",
        "The app crashes whenever I open {section}",
        "I can't open {section} after logging in",
        "Can I get a refund for {plan}?",
        "I paid with {pay} but {plan} is still not active",
        "Why was I charged twice for {plan}?",
        "{section} says my account is locked",
    ],
    "greeting": [
        "{hello}{who}",
        "{hello}{who}, how are you?",
        "{thanks}{who}",
        "{hello}{who}! nice to meet you",
        "{thanks}{who}, that helped",
        "{hello}{who}, hope you're well",
        "bye{who}, see you tomorrow",
        "good night{who}",
    ],
    "feedback_request": [
        "Can you check my {work} on {essay}?",
        "Please grade my {work} on {essay}",
        "How many marks would my {work} on {essay} get?",
        "Is my answer right? {eq}",
        "Please check my working: {eq}",
        "What mistakes did I make in my {work}?",
        "How can I improve my {work} about {essay}?",
        "Mark my {work} out of 10 please",
        "Can you review my {work} and tell me what to fix?",
        "I wrote a {work} on {essay}, is it good enough?",
    ],
    "off_topic": [
        "What's the weather in {city} today?",
        "How do I cook {food}?",
        "Play a song by {singer}",
        "Best restaurants in {city}?",
        "Book me a train ticket to {city}",
        "Did {team} win yesterday?",
        "What's the latest score of the {team} match?",
        "Is {singer} doing a concert in {city}?",
        "Where can I buy the best {food} in {city}?",
        "Who is the captain of {team}?",
    ],
}

BN_TEMPLATES: dict[str, list[str]] = {
    "subject_question": [
        "{topic} কী?",
        "{topic} সহজ করে বুঝিয়ে দাও",
        "{topic} বুঝতে পারছি না, একটু সাহায্য করবে?",
        "{topic} সম্পর্কে বিস্তারিত বলো",
        "{topic} এর একটা উদাহরণ দাও",
        "{topic} কাকে বলে?",
        "{topic} নিয়ে গুরুত্বপূর্ণ প্রশ্নগুলো উত্তরসহ দাও",
        "{topic} এর সংজ্ঞা লেখো",
        "অষ্টম শ্রেণির ছাত্রকে {topic} কীভাবে বোঝাবে?",
        "{topic} পাঁচ লাইনে সংক্ষেপে লেখো",
        "{topic} কেন গুরুত্বপূর্ণ?",
        "{topic} শিখতে চাই, কোথা থেকে শুরু করব?",
    ],
    "exam_logistics": [
        "{exam.0} কবে শুরু হবে?",
        "{exam.1} রুটিন কি প্রকাশিত হয়েছে?",
        "{exam.1} প্রবেশপত্র কোথা থেকে ডাউনলোড করব?",
        "{exam.1} ফলাফল কবে দেবে?",
        "{exam.1} সিলেবাস কী?",
        "{exam.0} কি পিছিয়ে গেছে?",
        "{exam.1} সিট প্ল্যান কোথায় পাব?",
        "{exam.1} ফর্ম পূরণের শেষ তারিখ কবে?",
        "{exam.0} কয়টায় শুরু হয়?",
        "{exam.1} পূর্ণমান কত?",
        "{exam.1} খাতা পুনর্মূল্যায়নের আবেদন কীভাবে করব?",
        "{exam.1} সময় কত ঘণ্টা?",
        "{exam.0} কি অনলাইনে হবে না অফলাইনে?",
        "{exam.1} জন্য কী কী কাগজপত্র নিয়ে যেতে হবে?",
        "{exam.1} কেন্দ্র কোথায় পড়েছে?",
    ],
    "account_admin": [
        "{pay} দিয়ে {plan.1} টাকা কীভাবে দেব?",
        "{pay} দিয়ে টাকা কেটে গেছে কিন্তু {plan.0} চালু হয়নি",
        "{plan.0} বাতিল করতে চাই",
        "{plan.1} মেয়াদ শেষ, কীভাবে নবায়ন করব?",
        "{section} খুললেই অ্যাপ বন্ধ হয়ে যাচ্ছে",
        "লগইন করার পর {section} খুলছে না",
        "{plan.1} টাকা ফেরত পাব কীভাবে?",
        "{plan.1} জন্য দুবার টাকা কেটেছে কেন?",
        "{plan.0} কিনতে চাই, {pay} চলবে?",
        "{section} বলছে আমার অ্যাকাউন্ট লক করা হয়েছে",
        "{pay} এ পেমেন্ট করতে গেলে এরর দেখাচ্ছে",
    ],
    "greeting": [
        "{hello}{who}",
        "{hello}{who}, কেমন আছেন?",
        "{thanks}{who}",
        "{hello}{who}, কেমন আছো?",
        "{thanks}{who}, খুব উপকার হলো",
        "{hello}{who}! আপনার সাথে কথা বলে ভালো লাগলো",
        "আজ আসি{who}, কাল আবার দেখা হবে",
        "শুভ রাত্রি{who}",
    ],
    "feedback_request": [
        "'{essay}' রচনাটা লিখেছি, একটু দেখে দেবে?",
        "আমার লেখা '{essay}' রচনাটি কত নম্বর পাবে?",
        "আমার {work}টি মূল্যায়ন করে দাও",
        "আমার {work}টিতে কী কী ভুল আছে বলো",
        "আমার {work}টি কীভাবে আরও ভালো করতে পারি?",
        "আমার {work}টি দশের মধ্যে কত পাবে?",
        "আমার উত্তর ঠিক হয়েছে কিনা যাচাই করে দাও: {eq}",
        "দেখো তো ঠিক করেছি কিনা: {eq}",
        "'{essay}' নিয়ে আমার {work}টি পড়ে মতামত দাও",
        "আমার {work}টি শিক্ষকের মতো করে নম্বর দাও",
    ],
    "off_topic": [
        "আজ {city.1} আবহাওয়া কেমন?",
        "{food} কীভাবে রান্না করব?",
        "{singer.1} একটা গান চালাও",
        "{city.1} সেরা রেস্টুরেন্ট কোনগুলো?",
        "{city.0} যাওয়ার ট্রেনের টিকিট কেটে দাও",
        "কাল {team} কি জিতেছে?",
        "{team} এর খেলার স্কোর কত?",
        "{singer.0} কি {city.0} তে কনসার্ট করবেন?",
        "{city.1} কোথায় ভালো {food} পাওয়া যায়?",
        "{team} এর অধিনায়ক কে?",
    ],
}

# ---------------------------------------------------------------- hand-written sentences
EN_HAND: dict[str, list[str]] = {
    "subject_question": [
        "How do I solve x^2 - 5x + 6 = 0?",
        "What is the area of a circle with radius 7 cm?",
        "Why is the sky blue?",
        "In which year was the Battle of Plassey fought?",
        "Who wrote Gitanjali?",
        "Why does water boil at 100 degrees Celsius?",
        "Which gas is released during photosynthesis?",
        "What is the simple interest on 500 taka at 8% for 3 years?",
        "What is the sum of the angles of a triangle?",
        "Why is the mitochondria called the powerhouse of the cell?",
        "Where does the Padma river come from?",
        "What caused the Language Movement in 1952?",
        "What is the capital of Bangladesh?",
        "How many bones are in the human body?",
        "Find the HCF of 24 and 36",
        "What does the heart do?",
        "Convert this sentence to passive voice: Rahim wrote a letter.",
        "What is the chemical formula of water?",
        "Who is known as the father of the nation of Bangladesh?",
        "Why do we see lightning before thunder?",
    ],
    "exam_logistics": [
        "When do the exams start this year?",
        "Has the exam routine come out?",
        "My admit card has a spelling mistake",
        "Can I take a calculator into the exam hall?",
        "How are the marks divided between MCQ and written?",
        "Is the practical exam before or after the theory papers?",
        "What is the pass mark?",
        "How do I check my result online?",
        "Can I change my exam centre?",
        "When is the form fill-up deadline?",
        "Are there any changes in the syllabus this year?",
        "How much time do we get for the MCQ part?",
    ],
    "account_admin": [
        "I forgot my password",
        "How do I reset my password?",
        "I can't log in to my account",
        "I didn't receive the OTP",
        "How do I change my registered phone number?",
        "How do I delete my account?",
        "Can I use my account on two phones?",
        "How do I change my email address?",
        "How do I update my profile photo?",
        "Where can I see my payment history?",
        "How do I switch the app language to Bengali?",
        "I'm not getting any notifications",
        "I want to change my class from 9 to 10 in my profile",
        "My name is spelled wrong on my profile",
        "The app logged me out and won't let me back in",
        "How do I link my parent's phone number?",
    ],
    "greeting": [
        "hello, anyone there?",
        "good morning everyone",
        "hey, what's up?",
        "yo",
        "hi again",
        "thanks, you're the best",
        "ok bye",
        "have a nice day",
        "nice to meet you",
        "see you later",
        "hello hello",
        "good evening, I'm back",
    ],
    "feedback_request": [
        "Check my grammar: 'She don't like apples.'",
        "Did I write this letter correctly?",
        "Here is my answer to question 3, is it complete?",
        "Is my translation of this paragraph accurate?",
        "How would a teacher grade this answer?",
        "Please give feedback on my handwriting practice",
        "I solved all ten sums, can you verify them?",
        "Tell me honestly, is my essay good?",
        "Is my summary too long?",
        "Which parts of my answer would lose marks?",
    ],
    "off_topic": [
        "Tell me a joke",
        "Recommend a good movie",
        "Do you like cricket?",
        "What's the price of onions today?",
        "Which phone should I buy under 15000 taka?",
        "Who is your favourite actor?",
        "What's your favourite colour?",
        "Is it going to rain tonight?",
        "Which web series should I watch this weekend?",
        "What should I wear to a wedding?",
        "Can you order food for me?",
        "How do I grow more followers on Instagram?",
    ],
}

BN_HAND: dict[str, list[str]] = {
    "subject_question": [
        "x² - ৫x + ৬ = ০ সমীকরণটি কীভাবে সমাধান করব?",
        "একটি বৃত্তের ব্যাসার্ধ ৭ সেমি হলে ক্ষেত্রফল কত?",
        "আকাশ নীল দেখায় কেন?",
        "পলাশীর যুদ্ধ কত সালে হয়েছিল?",
        "বাংলাদেশের জাতীয় কবি কে?",
        "গীতাঞ্জলি কে লিখেছেন?",
        "জল কেন ১০০ ডিগ্রিতে ফোটে?",
        "সালোকসংশ্লেষণে কোন গ্যাস নির্গত হয়?",
        "৫০০ টাকার ৮% হারে ৩ বছরের সরল সুদ কত?",
        "ত্রিভুজের তিন কোণের সমষ্টি কত?",
        "মাইটোকন্ড্রিয়াকে কোষের শক্তিঘর বলা হয় কেন?",
        "পদ্মা নদী কোথা থেকে উৎপন্ন হয়েছে?",
        "১৯৫২ সালের ভাষা আন্দোলনের কারণ কী ছিল?",
        "মানবদেহে কয়টি হাড় আছে?",
        "২৪ ও ৩৬ এর গ.সা.গু. নির্ণয় করো",
        "পানির রাসায়নিক সংকেত কী?",
        "বজ্রপাতের আগে বিদ্যুৎ চমকানো দেখি কেন?",
        "'রহিম চিঠি লিখেছে' বাক্যটির বাচ্য পরিবর্তন করো",
    ],
    "exam_logistics": [
        "এ বছর পরীক্ষা কবে থেকে শুরু?",
        "পরীক্ষার রুটিন কি বের হয়েছে?",
        "আমার প্রবেশপত্রে নামের বানান ভুল আছে",
        "পরীক্ষার হলে ক্যালকুলেটর নেওয়া যাবে?",
        "এমসিকিউ আর লিখিত অংশে নম্বর কীভাবে ভাগ করা?",
        "ব্যবহারিক পরীক্ষা কি লিখিত পরীক্ষার আগে হবে?",
        "পাস নম্বর কত?",
        "অনলাইনে রেজাল্ট কীভাবে দেখব?",
        "পরীক্ষা কেন্দ্র কি পরিবর্তন করা যায়?",
        "এ বছর সিলেবাসে কোনো পরিবর্তন আছে?",
        "এমসিকিউ অংশের জন্য কত সময় দেওয়া হয়?",
        "রেজাল্ট কবে দেবে?",
    ],
    "account_admin": [
        "আমার পাসওয়ার্ড ভুলে গেছি",
        "পাসওয়ার্ড কীভাবে রিসেট করব?",
        "অ্যাকাউন্টে লগইন করতে পারছি না",
        "ওটিপি আসছে না",
        "মোবাইল নম্বর কীভাবে পরিবর্তন করব?",
        "অ্যাকাউন্ট ডিলিট করতে চাই",
        "একই অ্যাকাউন্ট দুটো ফোনে চালানো যাবে?",
        "ইমেইল ঠিকানা বদলাতে চাই",
        "প্রোফাইলের ছবি কীভাবে বদলাব?",
        "পেমেন্টের ইতিহাস কোথায় দেখব?",
        "অ্যাপের ভাষা ইংরেজি থেকে বাংলা করব কীভাবে?",
        "নোটিফিকেশন আসছে না কেন?",
        "প্রোফাইলে আমার শ্রেণি নবম থেকে দশম করতে চাই",
        "প্রোফাইলে আমার নামের বানান ভুল",
        "অ্যাপ নিজে থেকেই লগআউট হয়ে যাচ্ছে",
        "অভিভাবকের ফোন নম্বর কীভাবে যুক্ত করব?",
    ],
    "greeting": [
        "কেউ আছেন?",
        "সবাইকে শুভ সকাল",
        "কী খবর?",
        "আবার এলাম",
        "তুমি সবার সেরা, ধন্যবাদ",
        "ঠিক আছে, বিদায়",
        "তোমার দিনটা ভালো কাটুক",
        "পরে কথা হবে",
        "হ্যালো হ্যালো",
        "শুভ সন্ধ্যা, আমি ফিরে এসেছি",
        "ভালো থেকো",
        "আদাব",
    ],
    "feedback_request": [
        "আমার ব্যাকরণ ঠিক আছে কিনা দেখো: 'সে আম খায় না।'",
        "চিঠিটা ঠিকমতো লিখেছি কি?",
        "৩ নম্বর প্রশ্নের উত্তরটা সম্পূর্ণ হয়েছে কি?",
        "আমার অনুবাদটা কি ঠিক হয়েছে?",
        "একজন শিক্ষক এই উত্তরে কত নম্বর দিতেন?",
        "আমার হাতের লেখা নিয়ে মতামত দাও",
        "দশটা অঙ্কই করেছি, মিলিয়ে দেখবে?",
        "সত্যি করে বলো, আমার রচনাটা কি ভালো হয়েছে?",
        "আমার সারাংশটা কি বেশি বড় হয়ে গেছে?",
        "আমার উত্তরের কোন অংশে নম্বর কাটা যাবে?",
    ],
    "off_topic": [
        "একটা মজার কৌতুক বলো",
        "ভালো একটা সিনেমার নাম বলো",
        "তুমি কি ক্রিকেট পছন্দ করো?",
        "পেঁয়াজের দাম আজ কত?",
        "পনেরো হাজার টাকার মধ্যে কোন ফোন কিনব?",
        "তোমার প্রিয় অভিনেতা কে?",
        "তোমার প্রিয় রং কী?",
        "আজ রাতে কি বৃষ্টি হবে?",
        "এই সপ্তাহে কোন ওয়েব সিরিজ দেখব?",
        "বিয়েবাড়িতে কী পরব?",
        "আমার জন্য খাবার অর্ডার করে দাও",
        "ইনস্টাগ্রামে ফলোয়ার কীভাবে বাড়াব?",
    ],
}

BANGLISH: dict[str, list[str]] = {
    "subject_question": [
        "photosynthesis ki bujhiye dao",
        "pythagoras theorem ta ektu explain koro",
        "plassey r juddho kobe hoyechilo?",
        "ei equation ta kivabe solve korbo: 2x + 3 = 11",
        "সালোকসংশ্লেষণ process টা একটু explain করো",
        "Newton er third law ta ki?",
        "ইংরেজিতে present perfect tense কখন use করি?",
        "osmosis ar diffusion er parthokko ki?",
    ],
    "exam_logistics": [
        "HSC result kobe dibe?",
        "admit card kothay pabo?",
        "madhyamik er routine beriyeche?",
        "exam center kothay porse?",
        "HSC-র result কবে দেবে?",
        "admit card এখনো পাইনি, কী করব?",
        "model test er syllabus ta ki?",
    ],
    "account_admin": [
        "password bhule gechi",
        "login korte parchi na",
        "bkash e taka kete geche kintu premium on hoyni",
        "OTP asche na",
        "আমার password ভুলে গেছি",
        "account টা delete করতে চাই",
        "subscription renew kivabe korbo?",
    ],
    "greeting": [
        "kemon acho?",
        "assalamu alaikum sir",
        "nomoskar didi",
        "onek dhonnobad",
        "shubho sokal",
        "hi bhaiya, ki khobor?",
        "thank you দাদা",
    ],
    "feedback_request": [
        "amar essay ta check kore dao",
        "amar answer ta thik ache kina bolo",
        "rochona ta koto number pabe?",
        "আমার essay টা একটু check করে দাও",
        "letter ta thik moto likhechi kina dekho",
    ],
    "off_topic": [
        "aaj match e ke jitlo?",
        "ekta joke bolo",
        "valo movie suggest koro",
        "biryani kivabe banai?",
        "কাল IPL match এ কে জিতল?",
        "ekta gaan chalao",
    ],
}


def _expand(template: str, slots: dict[str, list[Any]], rng: random.Random, limit: int) -> list[str]:
    import re

    names = sorted({m.split(".")[0] for m in re.findall(r"\{([a-z]+(?:\.\d)?)\}", template)})
    pools = [slots[n] for n in names]
    combos = list(itertools.product(*pools))
    rng.shuffle(combos)
    out: list[str] = []
    for combo in combos[:limit]:
        text = template
        for name, value in zip(names, combo, strict=True):
            if isinstance(value, tuple):
                text = text.replace("{" + name + ".0}", value[0]).replace("{" + name + ".1}", value[1])
            else:
                text = text.replace("{" + name + "}", value)
        out.append(text)
    return out


def build() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rng = random.Random(SEED)
    train: list[dict[str, str]] = []
    test: list[dict[str, str]] = []
    for lang, templates, slots, hand in (
        ("en", EN_TEMPLATES, EN_SLOTS, EN_HAND),
        ("bn", BN_TEMPLATES, BN_SLOTS, BN_HAND),
    ):
        for label in LABELS:
            # groups: one per template (its expansions), one per hand-written sentence
            groups: list[list[tuple[str, str]]] = []
            for h in hand[label]:
                groups.append([(h, "authored:hand")])
            if lang == "bn":
                for h in BANGLISH[label]:
                    groups.append([(h, "authored:hand-banglish")])
            n_fixed = sum(len(g) for g in groups)
            tmpls = templates[label]
            per_template = max(1, -(-(PER_CELL - n_fixed) // len(tmpls)))
            for t in tmpls:
                groups.append([(x, "authored:template-v1") for x in _expand(t, slots, rng, per_template)])
            # de-duplicate across groups, keep order
            seen: set[str] = set()
            deduped: list[list[tuple[str, str]]] = []
            for g in groups:
                g2 = [(x, s) for x, s in g if x not in seen]
                seen.update(x for x, _ in g2)
                if g2:
                    deduped.append(g2)
            total = sum(len(g) for g in deduped)
            rng.shuffle(deduped)
            want_test = round(total * TEST_SHARE)
            n_test = 0
            for g in deduped:
                side = test if n_test < want_test and n_test + len(g) <= want_test + 2 else train
                if side is test:
                    n_test += len(g)
                for text, source in g:
                    ident = hashlib.blake2b(f"{lang}\x00{label}\x00{text}".encode(), digest_size=6).hexdigest()
                    side.append({"id": f"{lang}-{ident}", "text": text, "label": label, "lang": lang, "source": source})
    return train, test


def write(out_dir: Path = HERE) -> tuple[int, int]:
    train, test = build()
    for name, rows in (("train", train), ("test", test)):
        with (out_dir / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(train), len(test)


if __name__ == "__main__":
    n_train, n_test = write()
    print(f"train: {n_train}  test: {n_test}")
