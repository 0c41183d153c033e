"""Write custos/tasks/data/customer_intents.jsonl: the bundled labelled customer-intent set.

The messages were written for Custos; each phrasing is filled twice with invented personal data (names,
e-mail addresses, phone numbers, order numbers, addresses) so that the set exercises the anonymizer.
Deterministic: running it again writes the same file.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "custos" / "tasks" / "data" / "customer_intents.jsonl"

NAMES = [
    "Emily Johnson", "Jamal Washington", "Mohammed Al-Sayed", "Wei Zhang", "Priya Patel", "Olga Ivanova",
    "José García", "Aisha Okafor", "Lars Andersen", "Hiroshi Tanaka", "Fatima Benali", "Liam O'Brien",
    "Sofia Rossi", "Kwame Mensah", "Anna Kowalska", "Daniel Cohen", "Mei Lin", "Carlos Mendoza",
]
EMAILS = [
    "emily.j@example.com", "jamal.w@example.org", "m.alsayed@example.net", "wei.zhang@example.com",
    "priya.p@example.org", "olga.iv@example.com", "jgarcia@example.net", "aisha.okafor@example.com",
]
PHONES = ["+1 415 555 0132", "+44 20 7946 0958", "+1 212 555 0187", "+49 30 901820", "+1 646 555 0111"]
ORDERS = ["#48213", "#51907", "#39920", "#60412", "#47755", "#58301", "#44019"]
STREETS = ["12 Baker Street, London", "450 Pine Avenue, Seattle", "Hauptstrasse 5, Berlin", "88 Elm Road, Leeds"]

PHRASINGS: dict[str, list[str]] = {
    "order_status": [
        "Hi, this is {name}. Where is my order {order}? It was supposed to arrive last week.",
        "My parcel {order} still hasn't arrived. Can you tell me where it is?",
        "Could you check the status of order {order}? You can reach me at {phone}.",
        "I ordered a lamp ten days ago and I'm still waiting. Order {order}, name {name}.",
        "The tracking for {order} has not updated in four days. Is it lost?",
        "When will my package get here? It's order {order}.",
        "Hello, {name} here, I want to know when order {order} will be delivered.",
        "Has my order shipped yet? I placed it on Monday under {email}.",
        "The courier says delivered but I have nothing. Order {order}.",
        "Can you give me a tracking number for my order {order}?",
        "It's been two weeks and no sign of my shoes. My email is {email}.",
        "Is order {order} on its way? I need it before Friday.",
        "Where is my delivery? I'm {name} and I ordered a jacket.",
        "My order {order} shows 'processing' for a week now, what is going on?",
    ],
    "cancel_order": [
        "Please cancel my order {order}, I ordered the wrong size. {name}",
        "I changed my mind, can you cancel order {order} before it ships?",
        "Hi, I'd like to cancel the order I placed this morning. Email {email}.",
        "Cancel order {order} please, I found it cheaper elsewhere.",
        "Is it too late to cancel {order}? Call me on {phone}.",
        "I placed a duplicate order by mistake, please cancel {order}.",
        "This is {name}. I no longer need the printer I ordered, please cancel it.",
        "How do I cancel an order that hasn't shipped yet? It's {order}.",
        "Please stop order {order}, I don't want it anymore.",
        "Can you cancel my subscription box order {order} for next month?",
        "I need to cancel order {order} because I'm moving abroad.",
        "Hello, I want to cancel everything in my last order, account {email}.",
        "Cancel my purchase from yesterday please, name {name}.",
        "I ordered two of the same chair, please cancel one of them, order {order}.",
    ],
    "return_refund": [
        "I want to return the dress from order {order}, it doesn't fit. How do I get a refund?",
        "Hi, {name} here. How can I send back the headphones and get my money back?",
        "I returned the boots two weeks ago and still have no refund. Order {order}.",
        "Can I return an item I bought 20 days ago? Email {email}.",
        "Please send me a return label for order {order}.",
        "I'd like a refund for the coat, I don't like the colour.",
        "When will I get my refund for order {order}? I sent it back on the 3rd.",
        "How long do I have to return a sofa? I'm {name}.",
        "The jacket is too small, I want to send it back for a refund. {phone}",
        "Do I have to pay for return shipping on order {order}?",
        "I want my money back for the speaker, it isn't what I expected.",
        "Where do I drop off a return? Order {order}, name {name}.",
        "Your website says free returns but I was charged for the label, can I get a refund on order {order}?",
        "Please refund the unused gift card I bought, email {email}.",
    ],
    "billing_problem": [
        "I was charged twice for order {order}. Please fix this. {name}",
        "My credit card statement shows a payment I don't recognise from your shop.",
        "The invoice for {order} has the wrong amount on it.",
        "Why was I billed 49 euros when the total was 39? Email {email}.",
        "Hello, {name} here. I was overcharged for shipping on order {order}.",
        "Can you send me a corrected invoice with my company name? Order {order}.",
        "You charged my card after I cancelled, please reverse it. {phone}",
        "There is a double payment on my account {email}.",
        "My bill shows a subscription fee I never signed up for.",
        "The discount code was not applied and I paid full price for {order}.",
        "I need a VAT invoice for my purchase, name {name}.",
        "Why is there a pending charge on my card for an order I never placed?",
        "The amount taken from my bank is different from the invoice for {order}.",
        "I was charged in dollars instead of pounds, please check {order}.",
    ],
    "change_address": [
        "I moved last week. Please deliver order {order} to {street} instead.",
        "Can I change the delivery address for {order}? New address: {street}.",
        "Hi, {name} here, I typed the wrong street name, it should be {street}.",
        "Please update my shipping address to {street}. Email {email}.",
        "Is it possible to send my parcel to my office instead of my home? Order {order}.",
        "I need to change where my order goes, I'm at {street} now.",
        "Wrong postcode on order {order}, please correct it. Call {phone}.",
        "Can you deliver to my neighbour's address, {street}, instead?",
        "My address in the account is old, please change it to {street}.",
        "Please redirect order {order} to a pickup point near {street}.",
        "I will be away, can you ship to my parents at {street}? I'm {name}.",
        "How do I change the address on an order that is already shipped? {order}",
        "The apartment number is missing from my address for {order}.",
        "Update my billing and delivery address please, {name}, {street}.",
    ],
    "account_access": [
        "I can't log in to my account, it says my password is wrong. Email {email}.",
        "My account is locked after too many attempts. I'm {name}.",
        "The password reset email never arrives at {email}.",
        "How do I reset my password? I forgot it.",
        "I can't sign in since the app update. Phone {phone}.",
        "Someone changed the email on my account, I can't get in. {name}",
        "The two-factor code never comes to {phone}.",
        "I get an error every time I try to log in.",
        "Please unlock my account, username {email}.",
        "I created an account but never got the confirmation link.",
        "My login stopped working, can you help? {name}",
        "I want to change the email address I use to sign in, it's {email} now.",
        "The site keeps logging me out and I cannot access my orders.",
        "Can you delete my old account so I can register again with {email}?",
    ],
    "damaged_item": [
        "The vase from order {order} arrived broken. {name}",
        "My new phone case is cracked right out of the box.",
        "The TV screen was damaged when it arrived, order {order}.",
        "The blender stopped working after two days, it's defective. Email {email}.",
        "Half the plates in my set were smashed, order {order}.",
        "The zip on the bag broke the first time I used it. I'm {name}.",
        "The parcel was crushed and the lamp inside is bent. Call me at {phone}.",
        "My chair came with a missing screw and a scratched leg, order {order}.",
        "The kettle leaks water, it must be faulty.",
        "The headphones only work on one side, order {order}.",
        "The book arrived with water damage, {name}.",
        "The glass table top has a chip in the corner, order {order}.",
        "The shoes have a tear in the seam already.",
        "My order {order} arrived but the box was open and the item scratched.",
    ],
    "payment_methods": [
        "Can I pay with PayPal? {name}",
        "Do you accept American Express cards?",
        "Is it possible to pay in instalments for a sofa?",
        "Can I pay by bank transfer instead of credit card? Email {email}.",
        "Do you take Apple Pay on the website?",
        "My card was declined, what other ways can I pay? {phone}",
        "Can I use two gift cards for one order?",
        "Do you offer pay later options like Klarna?",
        "Can I pay cash on delivery? I'm {name}.",
        "Which payment methods do you accept for business accounts?",
        "Is it safe to pay with a debit card on your site?",
        "Can I pay with a voucher and a card together?",
        "Do you accept payments in euros? Email {email}.",
        "Can my company pay by invoice for order {order}?",
    ],
    "delivery_options": [
        "How much does shipping to Canada cost?",
        "Do you offer express delivery? I need it by Saturday. {name}",
        "How long does delivery take to Germany?",
        "Is shipping free for orders over 50 pounds?",
        "Can I choose a delivery time slot? Email {email}.",
        "Do you ship to Australia and how long does it take?",
        "What delivery options are there for large furniture?",
        "Can I collect my order in a store instead of delivery? {phone}",
        "Do you deliver on Sundays?",
        "How much is next-day delivery to {street}?",
        "Which courier do you use for international shipping?",
        "Can I get my order delivered to a parcel locker? I'm {name}.",
        "Is there a cheaper shipping option than standard?",
        "Do you ship to PO boxes?",
    ],
    "unsubscribe": [
        "Please stop sending me marketing emails. {email}",
        "How do I unsubscribe from your newsletter?",
        "I keep getting promotional emails even though I opted out. {name}",
        "Remove {email} from all your mailing lists please.",
        "Stop sending me text messages with offers, my number is {phone}.",
        "I don't want any more newsletters, please unsubscribe me.",
        "The unsubscribe link in your email doesn't work. {email}",
        "Please take me off your marketing list, {name}.",
        "I get three emails a day from you, make it stop.",
        "How do I turn off promotional notifications in the app?",
        "Unsubscribe {email} from the weekly deals email.",
        "I never signed up for your newsletter, please remove me. {name}",
        "Stop the catalogue you post to {street}, I don't want it.",
        "Please delete my email from your advertising list.",
    ],
    "product_question": [
        "Does this jacket come in size XL? {name}",
        "Is the blue sofa still in stock?",
        "What material is the duvet cover made of?",
        "Is this charger compatible with the new phone model?",
        "Will the running shoes be back in stock in size 42? Email {email}.",
        "What are the dimensions of the oak desk?",
        "Is the coffee machine suitable for capsules from other brands?",
        "Does the dress come in another colour?",
        "Is the backpack waterproof? I'm {name}.",
        "How many watts is the vacuum cleaner?",
        "Is the mattress available in king size?",
        "Does the camera include a memory card? Call {phone}.",
        "Can the table be extended for eight people?",
        "Is the moisturiser suitable for sensitive skin?",
    ],
    "compliment": [
        "Thank you so much, the package arrived early and everything is perfect! {name}",
        "Great service, your agent solved my problem in five minutes.",
        "I love the new sofa, thank you!",
        "Just wanted to say the support team was amazing. {email}",
        "Excellent quality and fast delivery, I'll order again.",
        "Thanks for the quick refund, really appreciated. {name}",
        "Your colleague on the phone was so kind and helpful.",
        "Best online shop I've used, thank you all.",
        "The gift wrapping was beautiful, my mother loved it. Thanks!",
        "Thank you for replacing the broken lamp so quickly, order {order}.",
        "Amazing customer service as always.",
        "I'm really happy with my purchase, thanks {name} for the help.",
        "Well done, the delivery driver was very friendly.",
        "Thanks for sorting out my order {order} so fast!",
    ],
}


def main() -> None:
    rng = random.Random(20261128)
    rows = []
    for intent, phrasings in PHRASINGS.items():
        for phrasing, fill in itertools.product(phrasings, range(2)):
            values = {
                "name": rng.choice(NAMES),
                "email": rng.choice(EMAILS),
                "phone": rng.choice(PHONES),
                "order": rng.choice(ORDERS),
                "street": rng.choice(STREETS),
            }
            text = phrasing.format(**values)
            if fill == 1 and "{" not in phrasing:
                text = f"{text} Regards, {values['name']}"  # a second variant with PII in it
            rows.append({"text": text, "label": intent})
    rng.shuffle(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} messages, {len(PHRASINGS)} intents to {OUT}")


if __name__ == "__main__":
    main()
